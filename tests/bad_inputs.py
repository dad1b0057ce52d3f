"""A corpus of malformed and unusual inputs, written by the tests (tiny files, milliseconds).

Three kinds of outcome, each case names its own:

- ``EMBEDDED``: unusual but valid files that extraction embeds (odd modes, bit depths and sizes,
  wrong suffixes, DICOM without a suffix or with a VOI LUT instead of window tags);
- ``SKIPPED``: files extraction skips and ``datasets check`` reports, each by its path, with the
  reason (``match``: a regex the message must contain);
- refused datasets (:data:`REFUSED`): a manifest, npz or registry file that stops the command
  with a message naming the file and what to do.

Image cases live in one ImageFolder copy of ``sarscov2ct`` (classes COVID / non-COVID).
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

IMAGE_DATASET = "sarscov2ct"
CSV_DATASET = "hicervix"  # csv layout: train.csv (image_name, level_1..3) + train/<name>
NPZ_DATASET = "pneumoniamnist"


@dataclass(frozen=True)
class Case:
    relpath: str
    write: Callable[[Path], None]
    match: str = ""  # for a skipped file: what its message must say


def _smooth(seed: int, side: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.cumsum(np.cumsum(rng.normal(size=(side, side)), 0), 1)
    return ((a - a.min()) / max(np.ptp(a), 1e-9) * 255).astype(np.uint8)


def _save(mode: str | None = None, fmt: str | None = None, side: int = 32, seed: int = 0, **kw):
    def write(path: Path) -> None:
        im = Image.fromarray(_smooth(seed, side))
        (im.convert(mode) if mode else im).save(path, fmt, **kw)
    return write


def _array(a: np.ndarray, fmt: str | None = None, mode: str | None = None):
    def write(path: Path) -> None:
        Image.fromarray(a, mode).save(path, fmt) if mode else Image.fromarray(a).save(path, fmt)
    return write


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(_smooth(3)).convert("RGB").save(path, "JPEG", exif=exif.tobytes())


def _truncated(fmt: str):
    def write(path: Path) -> None:
        buf = io.BytesIO()
        Image.fromarray(_smooth(4, 64)).convert("RGB").save(buf, fmt)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return write


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 1-bit pixels, with one row of data:
    what a decompression bomb looks like to a decoder before it allocates."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * (1 + (width + 7) // 8))) + chunk(b"IEND", b""))


def _dicom(change: Callable | None = None, name: str = "CT_small.dcm"):
    def write(path: Path) -> None:
        import pydicom
        from pydicom.data import get_testdata_file

        ds = pydicom.dcmread(get_testdata_file(name))
        if change:
            change(ds)
        ds.save_as(path, enforce_file_format=True)
    return write


def add_voi_lut(ds) -> None:
    """A VOI LUT Sequence (a square-root curve over the modality values 0..2047, 8-bit out) in
    place of window tags."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [2048, 0, 8]
    item.LUTData = np.round(np.sqrt(np.arange(2048) / 2047) * 255).astype("<u2").tobytes()
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            delattr(ds, key)
    ds.VOILUTSequence = Sequence([item])


def _no_pixels(ds) -> None:
    del ds.PixelData


def _unknown_syntax(ds) -> None:
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"


def _short_pixels(ds) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]


def _two_frames(ds) -> None:
    ds.NumberOfFrames = 2


def _bytes(data: bytes):
    return lambda path: path.write_bytes(data)


_RAMP16 = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)

#: valid but unusual: embedded
EMBEDDED = [
    Case("COVID/cmyk.jpg", _save("CMYK", "JPEG")),
    Case("COVID/palette.png", _save("P")),
    Case("COVID/grey_alpha.png", _save("LA")),
    Case("COVID/rgba.png", _save("RGBA")),
    Case("COVID/sixteen_bit.png", _array(_RAMP16)),
    Case("COVID/sixteen_bit.tif", _array(_RAMP16, "TIFF")),
    Case("COVID/one_bit.png", _save("1")),
    Case("COVID/one_by_one.png", _save(side=1)),
    Case("COVID/thin_strip.png", _array(np.tile(np.arange(300, dtype=np.uint8), (2, 1)))),
    Case("COVID/int32.tif", _array((np.arange(1024).reshape(32, 32) * 64).astype(np.int32),
                                   "TIFF")),
    Case("COVID/jpeg_named.png", _save("RGB", "JPEG", seed=5)),  # a wrong suffix that decodes
    Case("COVID/bitmap.bmp", _save("RGB", "BMP", seed=6)),
    Case("COVID/exif_rotated.jpg", _exif_rotated),
    Case("non-COVID/IM000001", _dicom()),  # DICOM export without a suffix
    Case("non-COVID/dicom_named.png", _dicom(name="MR_small.dcm")),
    Case("non-COVID/voi_lut.dcm", _dicom(add_voi_lut)),
]

#: unreadable: skipped by extract, reported by datasets check, each by its path
SKIPPED = [
    Case("COVID/truncated.jpg", _truncated("JPEG"), "truncated|broken data|image file"),
    Case("COVID/truncated.png", _truncated("PNG"), "truncated|broken data|image file"),
    Case("COVID/truncated.tif", _truncated("TIFF"), "truncated|TIFF|tile|strip|image file"),
    Case("COVID/float32.tif", _array(np.linspace(0, 1, 1024, dtype=np.float32).reshape(32, 32),
                                     "TIFF"), "32-bit float pixels"),
    Case("COVID/zero_bytes.png", _bytes(b""), "the file is empty"),
    Case("COVID/error_page.png", _bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>"),
         "HTML/XML page"),
    Case("COVID/bomb.png", _bytes(png_claiming(20000, 20000)), "decompression bomb"),
    Case("COVID/big.png", _bytes(png_claiming(10000, 10000)), "decompression bomb"),
    Case("non-COVID/no_pixels.dcm", _dicom(_no_pixels), "has no pixel data"),
    Case("non-COVID/unknown_syntax.dcm", _dicom(_unknown_syntax), "transfer syntax 1.2.3.4.5.6.7"),
    Case("non-COVID/short_pixels.dcm", _dicom(_short_pixels),
         "pixel data does not match its header"),
    Case("non-COVID/two_frames.dcm", _dicom(_two_frames), "has 2 frames.*separate files"),
    Case("non-COVID/not_dicom.dcm", _bytes(b"just text, not a DICOM file\n" * 8),
         "not a readable DICOM file"),
]


def write_image_corpus(root: Path, fillers: int = 3) -> Path:
    """Every :data:`EMBEDDED` and :data:`SKIPPED` case plus ``fillers`` plain images per class."""
    for k, c in enumerate(("COVID", "non-COVID")):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(fillers):
            Image.fromarray(_smooth(100 + 10 * k + i)).save(root / c / f"plain_{i}.png")
    for case in EMBEDDED + SKIPPED:
        case.write(root / case.relpath)
    return root


# -- refused datasets: a CSV manifest, a MedMNIST npz, a model registry ------------------------
def write_csv_dataset(root: Path, manifest: str, images: tuple[str, ...] = ("a.png", "b.png"),
                      encoding: str = "utf-8") -> Path:
    """A HiCervix-layout copy: ``manifest`` (the text of train.csv) and ``train/<images>``."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        Image.fromarray(_smooth(200 + i)).save(root / "train" / name)
    (root / "train.csv").write_bytes(manifest.encode(encoding))
    return root


CSV_HEADER = "image_name,level_1,level_2,level_3\n"
CSV_OK_ROWS = "a.png,ASC,ASC-US,ASC-US\nb.png,negative,normal,Normal\n"

#: (name, train.csv text, encoding, what the refusal must say); None: embedded
CSV_CASES = [
    ("bom", "\ufeff" + CSV_HEADER + CSV_OK_ROWS, "utf-8", None),
    ("latin1", CSV_HEADER + "a.png,ASC,ASC-US,Atypie é\nb.png,negative,normal,Normal\n",
     "latin-1", None),
    ("missing_column", "image_name,level_1,level_2\na.png,ASC,ASC-US\n", "utf-8",
     r"train.csv: columns \['level_3'\] not found"),
    ("duplicate_path", CSV_HEADER + CSV_OK_ROWS + "a.png,ASC,ASC-US,ASC-US\n", "utf-8",
     r"train.csv row 4 names 'train/a.png' again \(first on row 2\)"),
    ("parent_path", CSV_HEADER + CSV_OK_ROWS + "../../etc/passwd,ASC,ASC-US,ASC-US\n", "utf-8",
     r"train.csv row 4: path .* points outside the dataset root"),
    ("short_row", CSV_HEADER + CSV_OK_ROWS + "a.png,ASC\n", "utf-8",
     r"train.csv row 4 does not have the header's 4 fields"),
]


def _npz(**arrays) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        np.savez(path, **arrays)
    return write


_IMAGES = np.zeros((4, 28, 28), np.uint8)
_LABELS = np.array([[0], [1], [0], [1]], np.uint8)

#: (name, writer of pneumoniamnist.npz, what the refusal must say); None: embedded
NPZ_CASES = [
    ("rgb_images", _npz(train_images=np.zeros((4, 28, 28, 3), np.uint8), train_labels=_LABELS),
     None),
    ("wrong_keys", _npz(images=_IMAGES, labels=_LABELS), r"lacks \['train'\]_labels"),
    ("wrong_dtype", _npz(train_images=_IMAGES.astype(np.float64), train_labels=_LABELS),
     r"train_images is float64 \(4, 28, 28\); a MedMNIST file holds uint8"),
    ("wrong_shape", _npz(train_images=_IMAGES[:3], train_labels=_LABELS),
     r"train_images is uint8 \(3, 28, 28\).*one per train_labels row"),
    ("float_labels", _npz(train_images=_IMAGES, train_labels=_LABELS + 0.5),
     "train_labels is float64; MedMNIST labels are integers"),
    ("pickled_labels", _npz(train_images=_IMAGES,
                            train_labels=np.array([[0], [1], [0], {"x": 1}], dtype=object)),
     "Object arrays cannot be loaded when allow_pickle=False"),
    ("not_a_zip", lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "not a readable MedMNIST npz"),
]

_ENTRY = """\
models:
  tiny_bad:
    family: timm
    architecture: efficientnet_lite0
    source: random
    tap: pooled
    embed_dim: 1280
    preprocess: {image_size: 64, resize: shortest, interpolation: bicubic, stats: imagenet}
"""

#: (name, registry YAML text, what the refusal must say)
YAML_CASES = [
    ("wrong_type", _ENTRY.replace("embed_dim: 1280", 'embed_dim: "1280"'),
     r"field 'embed_dim' must be int, got '1280' \(str\)"),
    ("duplicate_key", _ENTRY + "    embed_dim: 512\n",
     r"key 'embed_dim' is given twice in one mapping \(first on line 7\)"),
    ("unsafe_tag", _ENTRY + "    notes: !!python/object/apply:os.system ['echo owned']\n",
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply"),
    ("path_in_name", _ENTRY.replace("tiny_bad:", "../../outside:"),
     r"entry name '../../outside' is not a plain name"),
    ("not_a_mapping", "models:\n  - a\n  - b\n", "expected a top-level 'models:' mapping"),
]
