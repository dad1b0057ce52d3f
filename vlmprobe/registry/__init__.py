"""The registries: models (``model_registry.yaml``) and datasets (``datasets.yaml``), shipped
inside the package and extended by user files, parsed and validated here. A model or a dataset is
an entry, not code."""
from .datasets import (DATASETS_ENV, DATASETS_FILE, DatasetEntry, get_dataset_entry,
                       list_datasets, load_datasets, load_datasets_file)
from .models import (BUILTIN_REGISTRY, REGISTRY_ENV, ModelEntry, PreprocessCfg, get_model_entry,
                     list_models, load_registry, random_twin, random_twins)

__all__ = ["BUILTIN_REGISTRY", "DATASETS_ENV", "DATASETS_FILE", "DatasetEntry", "ModelEntry",
           "PreprocessCfg", "REGISTRY_ENV", "get_dataset_entry", "get_model_entry",
           "list_datasets", "list_models", "load_datasets", "load_datasets_file", "load_registry",
           "random_twin", "random_twins"]
