"""Datasets on disk: listing (loaders per layout), decoding, fingerprints. Checks of a copy
(:mod:`.check`), the shared train/test splits (:mod:`.splits`) and phantom datasets
(:mod:`.phantoms`) are submodules of their own."""
from .dataset import ImageDataset, data_root, dataset_options, images_root, load_dataset
from .decode import (INTENSITIES, MEMBER_SEP, file_digest, fingerprint_files, read_dicom,
                     read_image, read_sample, sample_file)
from .loaders import LOADERS, MEDMNIST_SIZES, Sample

__all__ = ["INTENSITIES", "ImageDataset", "LOADERS", "MEDMNIST_SIZES", "MEMBER_SEP", "Sample",
           "data_root", "dataset_options", "file_digest", "fingerprint_files", "images_root",
           "load_dataset", "read_dicom", "read_image", "read_sample", "sample_file"]
