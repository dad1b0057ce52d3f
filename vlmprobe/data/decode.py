"""Decoding one sample to what the model's transform expects: 8-bit RGB (the default), or float32
RGB in [0, 1] (``intensity="float"``); DICOM windowing; content digests and fingerprints.

Not every image is a file: a MedMNIST sample is ``<file>.npz#<array key>/<index>``, so its relpath
names the file it lives in plus where inside it (:func:`sample_file`, :func:`read_sample`).
"""
from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..validation import VlmprobeError

#: How image files become the 8-bit RGB the official transforms expect; recorded in every cache.
INTENSITY_PIPELINE = "pil-decode -> 16-bit scaled /257 -> 8-bit RGB (palette/RGBA/CMYK/L converted)"


NPZ_PIPELINE = "medmnist npz uint8 -> RGB"


#: The opt-in float path (``intensity="float"``): no rounding to 256 levels before the model.
FLOAT_PIPELINE = ("pil-decode -> 16-bit /65535, 8-bit /255 -> float32 RGB in [0, 1], no 8-bit "
                  "rounding (palette/RGBA/CMYK/L converted)")


NPZ_FLOAT_PIPELINE = "medmnist npz uint8 -> RGB -> float32 /255"


#: "8bit": every sample becomes 8-bit RGB before the official transform (the default, what the
#: transform-equality tests check); "float": float32 RGB in [0, 1] for the float transform.
INTENSITIES = ("8bit", "float")


MEMBER_SEP = "#"  # "<file>.npz#train_images/17": the file, then the array key and index inside it
AXIAL = "axial"  # "<volume>#axial/12": an axial slice of a NIfTI file or DICOM series folder
WHOLE = "volume"  # "<volume>#volume": the whole volume, one sample for a 3-D encoder


# -- decoding and fingerprints ---------------------------------------------------------------
def sample_file(relpath: str) -> str:
    """The file a sample lives in: itself, or the npz it is a slot of."""
    return relpath.split(MEMBER_SEP, 1)[0]


def whole_volume_file(relpath: str) -> str | None:
    """The NIfTI file or series folder of a whole-volume sample, None for any other sample."""
    return relpath.removesuffix(MEMBER_SEP + WHOLE) if relpath.endswith(MEMBER_SEP + WHOLE) \
        else None


def sample_kind(relpath: str) -> str:
    if f"{MEMBER_SEP}{AXIAL}/" in relpath:
        return "volume"
    if whole_volume_file(relpath) is not None:
        return "volume3d"
    suffix = Path(sample_file(relpath)).suffix.lower()
    # a file without a suffix is listed only if it is a DICOM (:func:`is_dicom_file`)
    return {".npz": "npz", ".dcm": "dicom", "": "dicom"}.get(suffix, "raster")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (128-byte preamble, then ``DICM``):
    DICOM exports often carry no suffix (``IM000001``), or a wrong one."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_sample(root: Path, relpath: str, dicom_window: str = "tags",
                intensity: str = "8bit") -> Image.Image | np.ndarray:
    """Decode one sample (file, DICOM file, npz slot or axial slice of a volume) to 8-bit RGB,
    or for ``intensity="float"`` to float32 [H, W, 3] in [0, 1]."""
    if MEMBER_SEP not in relpath:
        return read_image(root / relpath, dicom_window, intensity=intensity)
    if sample_kind(relpath) == "volume":
        from .volumes import read_slice  # nibabel only where volumes are read

        return read_slice(Path(root), relpath, dicom_window, intensity)
    if sample_kind(relpath) == "volume3d":
        from .volumes import load_volume

        return load_volume(Path(root) / whole_volume_file(relpath))
    file, member = relpath.split(MEMBER_SEP, 1)
    key, index = member.rsplit("/", 1)
    return _as_intensity(Image.fromarray(_npz_array(root / file, key)[int(index)]), intensity)


def _as_intensity(image: Image.Image | np.ndarray, intensity: str) -> Image.Image | np.ndarray:
    """8-bit RGB PIL for "8bit"; float32 [H, W, 3] in [0, 1] for "float". ``image``: a PIL image
    of 8-bit levels, or a float array in [0, 1] ([H, W] or [H, W, 3]) not yet rounded."""
    if isinstance(image, np.ndarray):
        if intensity == "float":
            return np.ascontiguousarray(np.broadcast_to(
                image[..., None] if image.ndim == 2 else image, (*image.shape[:2], 3)),
                dtype=np.float32)
        return Image.fromarray(np.round(image * 255).astype(np.uint8)).convert("RGB")
    image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255 if intensity == "float" else image


@lru_cache(maxsize=2)
def _npz_array(path: Path, key: str) -> np.ndarray:
    """One array of an npz, kept: reading a key decompresses all of it, so once per worker."""
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


def read_image(path: Path, dicom_window: str = "tags", *, draft: int | None = None,
               intensity: str = "8bit") -> Image.Image | np.ndarray:
    """Decode an image file to 8-bit RGB (see :data:`INTENSITY_PIPELINE`, :func:`read_dicom`),
    or with ``intensity="float"`` to float32 [H, W, 3] in [0, 1] (:data:`FLOAT_PIPELINE`).

    PIL's decompression-bomb warning is an error here: a skipped image is reported, whereas
    decoding a 30-gigapixel file in every worker takes the machine down. ``draft`` (pixels,
    extract's ``--fast-decode``) lets a JPEG decode at the smallest DCT scale whose sides stay
    >= ``draft``; other formats ignore it.
    """
    if Path(path).suffix.lower() == ".dcm" or is_dicom_file(path):
        return read_dicom(path, dicom_window, intensity)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if draft and im.format == "JPEG":
                    im.draft(im.mode, (draft, draft))
                im.load()
                if im.mode == "F":
                    raise VlmprobeError(f"{path} holds 32-bit float pixels, whose intensity "
                                        "range no convention fixes; save it as an 8- or 16-bit "
                                        "image with the window you want.")
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    if intensity == "float":
                        return _as_intensity(np.clip(arr / 65535.0, 0, 1), intensity)
                    im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
                return _as_intensity(im, intensity)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VlmprobeError(f"{path}: {e} Skipped as a possible decompression bomb; if the file "
                            "is trusted, raise PIL.Image.MAX_IMAGE_PIXELS.") from None
    except Image.UnidentifiedImageError:
        raise VlmprobeError(f"{path} is not an image PIL can read ({_content_hint(path)}); "
                            "replace it with the image, or remove it.") from None
    except VlmprobeError:
        raise
    except Exception as e:  # noqa: BLE001 — any decoder failure on a damaged file, named
        raise VlmprobeError(f"{path} cannot be decoded ({type(e).__name__}: {e}); the file is "
                            "damaged or truncated: replace it with a complete copy.") from None


def _content_hint(path: Path) -> str:
    """What a file that is not an image holds, as far as its first bytes tell (an HTML error
    page saved under the image's name is the classic failed download)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if not head:
        return "the file is empty"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "it is an HTML/XML page, e.g. a failed download"
    return f"unknown content starting {head[:8]!r}"


#: what installs the DICOM decoders (pyproject's ``dicom`` extra)
DICOM_EXTRA = "pip install 'vlmprobe[dicom]'"


def require_pydicom(who: Path | str):
    """pydicom, or an error saying that ``who`` (a DICOM file, a phantom) needs it and which extra
    installs it: a DICOM dataset without its decoder stops the run instead of having every file
    skipped as unreadable."""
    try:
        import pydicom
    except ImportError:
        raise VlmprobeError(f"{who} needs pydicom to read DICOM, and pydicom is not installed "
                            f"here: {DICOM_EXTRA}") from None
    return pydicom


def dicom_pipeline(window: str, intensity: str = "8bit") -> str:
    voi = "; VOI LUT Sequence where no window tags" if window == "tags" else ""
    return (f"dicom: RescaleSlope/Intercept -> window {window} (DICOM linear{voi}) -> "
            "MONOCHROME1 inverted -> "
            + ("float32 RGB in [0, 1], no 8-bit rounding" if intensity == "float" else "8-bit RGB"))


def read_dicom(path: Path, window: str = "tags",
               intensity: str = "8bit") -> Image.Image | np.ndarray:
    """A single-frame DICOM as 8-bit RGB (or float32 [H, W, 3] in [0, 1] for
    ``intensity="float"``): modality rescale, window, MONOCHROME1 inversion.

    ``window``: "tags" uses WindowCenter/WindowWidth (the first pair), else the first VOI LUT
    Sequence item (``pydicom.pixels.apply_voi_lut``), falling back to the image's min-max where
    neither is present; "minmax" always uses min-max; "C,W" fixes one.
    """
    pydicom = require_pydicom(path)
    from pydicom.pixels import apply_rescale

    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, KeyError) as e:
        raise VlmprobeError(f"{path} is not a readable DICOM file ({type(e).__name__}: {e}); "
                            "replace it with a complete copy, or remove it.") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise VlmprobeError(f"{path} has {ds.NumberOfFrames} frames; vlmprobe embeds single "
                            "images. Export the frames you want as separate files.")
    if "PixelData" not in ds:
        raise VlmprobeError(f"{path} has no pixel data (a DICOM header, report or structured "
                            "document, not an image); remove it from the dataset.")
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        raise VlmprobeError(f"{path}: cannot decode transfer syntax "
                            f"{_transfer_syntax(ds)} ({e}).") from None
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise VlmprobeError(f"{path}: its pixel data does not match its header (Rows x Columns, "
                            f"bits, samples) ({type(e).__name__}: {e}); the file is damaged or "
                            "truncated: replace it with a complete copy.") from None
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        raise VlmprobeError(f"{path} is PALETTE COLOR, which vlmprobe does not decode yet; "
                            "convert it to RGB first.")
    if not photometric.startswith("MONOCHROME"):  # colour: pydicom already gives RGB
        return _as_intensity(arr / (2 ** int(ds.get("BitsStored", 8)) - 1), intensity)
    x = apply_rescale(arr, ds).astype(np.float64)
    if window == "tags" and "WindowCenter" not in ds and ds.get("VOILUTSequence"):
        y = _voi_lut(x, ds)
    else:
        y = apply_window(x, *_window(ds, window, x))
    if photometric == "MONOCHROME1":
        y = 1 - y
    return _as_intensity(y, intensity)


def apply_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2.1): values in [0, 1]."""
    return np.clip((x - (centre - 0.5)) / max(width - 1, 1) + 0.5, 0, 1)


def window_tags(ds) -> tuple[float, float] | None:
    """The first WindowCenter/WindowWidth pair of a DICOM header, or None where absent."""
    from pydicom.multival import MultiValue

    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centre, width = (v[0] if isinstance(v, MultiValue) else v  # several windows: the first
                     for v in (ds.WindowCenter, ds.WindowWidth))
    return float(centre), float(width)


def minmax_window(x: np.ndarray) -> tuple[float, float]:
    """The window that maps ``x``'s range onto [0, 1]."""
    lo, hi = float(x.min()), float(x.max())
    return (lo + hi) / 2 + 0.5, hi - lo + 1


def _transfer_syntax(ds) -> str:
    uid = ds.get("file_meta", {}).get("TransferSyntaxUID")
    if not uid:
        return "(none given)"
    return uid if uid.name == str(uid) else f"{uid.name} ({uid})"


def _voi_lut(x: np.ndarray, ds) -> np.ndarray:
    """The first VOI LUT Sequence item applied to modality values ``x``, scaled to [0, 1] by the
    LUT's output bit depth (LUT Descriptor's third value)."""
    from pydicom.pixels import apply_voi_lut

    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2])
    out = apply_voi_lut(np.rint(x).astype(np.int64), ds, prefer_lut=True)  # a LUT takes integers
    return np.clip(out.astype(np.float64) / (2 ** bits - 1), 0, 1)


def fixed_window(window: str) -> tuple[float, float] | None:
    """``(centre, width)`` for a "C,W" window, None for "tags" or "minmax"; else an error."""
    if window in ("tags", "minmax"):
        return None
    try:
        centre, width = (float(v) for v in window.split(","))
    except ValueError:
        raise VlmprobeError(f"dicom_window {window!r} is not 'tags', 'minmax' or 'CENTER,WIDTH' "
                            "(e.g. '40,400').") from None
    return centre, width


def _window(ds, window: str, x: np.ndarray) -> tuple[float, float]:
    tags = window_tags(ds) if window == "tags" else None
    return fixed_window(window) or tags or minmax_window(x)


def file_digest(path: Path) -> str:
    """blake2b-128 of a file's content; of a DICOM series folder, of its files' names and
    digests (the folder is the sample's file: :mod:`.volumes`)."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    if path.is_dir():
        for member in _series_files(path):
            h.update(f"{member.name}\t{file_digest(member)}\n".encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_size(path: Path) -> int:
    """Bytes of a file, or of a DICOM series folder's files."""
    path = Path(path)
    return sum(p.stat().st_size for p in _series_files(path)) if path.is_dir() \
        else path.stat().st_size


def _series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())


def fingerprint_files(root: Path, relpaths: list[str],
                      labels: list[str] | None = None) -> tuple[list[int], list[str], str]:
    """Sizes, content digests and the dataset fingerprint of ``relpaths`` (and ``labels``, if given).

    No mtimes, so a copied dataset keeps its fingerprint; sorted, so listing order does not matter.
    A slot of an npz gets its file's size and digest (read once), and its relpath names the slot,
    so the fingerprint covers both the file and which samples of it are used.
    """
    files = sorted({sample_file(r) for r in relpaths})
    known = {f: (file_size(root / f), file_digest(root / f)) for f in files}
    sizes = [known[sample_file(r)][0] for r in relpaths]
    digests = [known[sample_file(r)][1] for r in relpaths]
    h = hashlib.sha256()
    tails = [f"\t{x}" for x in labels] if labels is not None else [""] * len(relpaths)
    for r, s, d, t in sorted(zip(relpaths, sizes, digests, tails)):
        h.update(f"{r}\t{s}\t{d}{t}\n".encode())
    return sizes, digests, h.hexdigest()
