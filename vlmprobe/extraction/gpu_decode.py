"""``--fast-decode`` on a GPU: JPEG batches decoded on the GPU by nvJPEG, the official transform
run there on the decoded tensors, so 16 CPU cores of PIL decoding do not hold back a GPU that
embeds thousands of images a second.

Workers only read the files: a JPEG that nvJPEG should take (RGB or grey, no EXIF orientation,
within PIL's decompression-bomb limit) travels as its bytes; any other sample is decoded by PIL
in the worker, as on the exact path, and goes through the same transform on the GPU. A batch that nvJPEG rejects is decoded again image by image, and an image
it still rejects goes to PIL in this process: counted and recorded in the cache (``attrs
["gpu_decode"]``), never a crash of the batch. The transform is the official one on float
tensors (:func:`~vlmprobe.encoders.transforms.tensor_transform`: torch's antialiased resize
clamped to [0, 1], crop, normalise); like ``--fast-decode`` on a CPU its embeddings differ from
the exact path's by a few grey levels of resizing (cosine >= 0.999 is the check,
benchmarks/extract_gpu.py).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image

from ..cache.chunks import Chunk
from ..data import ImageDataset
from ..data.decode import MEMBER_SEP, sample_file
from ..encoders import Encoder
from ..encoders.transforms import FloatTransform, tensor_transform
from .batches import Batch, _DecodedImages

#: EXIF tag of the orientation (1 = as stored)
_ORIENTATION = 0x0112

#: what the cache key records of this path (beside the dataset's decoding pipeline)
GPU_PIPELINE = (" + fast decode on GPU (JPEG files without EXIF orientation by nvJPEG; other "
                "samples and nvJPEG's rejects by PIL) -> official transform on float tensors "
                "(torch antialiased resize clamped to [0, 1], crop, normalise)")


def choose_gpu_decode(fast_decode: bool, encoder: Encoder,
                      data: ImageDataset) -> tuple[FloatTransform | None, str]:
    """The transform the GPU path runs where ``--fast-decode`` can decode on the model's GPU,
    else (None, why not): ``--intensity float``, no JPEG files, a transform with no tensor
    form, the model on a CPU, or no working nvJPEG here."""
    if not fast_decode:
        return None, "exact decoding asked for"
    if data.entry.intensity != "8bit":
        return None, f"--intensity {data.entry.intensity}"
    if not any(Path(sample_file(s.relpath)).suffix.lower() in (".jpg", ".jpeg")
               for s in data.samples):
        return None, "no .jpg/.jpeg files in the dataset"
    transform = tensor_transform(encoder.transform_, encoder.entry.name)
    if transform is None:
        return None, ("its transform does not start with a torchvision bilinear/bicubic Resize "
                      "followed by tensor steps")
    if encoder.device.type != "cuda":
        return None, f"the model runs on {encoder.device.type}, not a CUDA GPU"
    why = gpu_decode_works(encoder.device)
    return (None, f"nvJPEG does not work here ({why})") if why else (transform, "")


def decode_jpegs(data: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """JPEG files' bytes (uint8 [n] CPU tensors) -> uint8 RGB [3, H, W] tensors on ``device``:
    nvJPEG on a CUDA device (libjpeg-turbo on the CPU, as PIL). The one place that calls
    torchvision's ``decode_jpeg``, which torchvision deprecates in favour of TorchCodec: a
    replacement goes here. Raises RuntimeError when any image of the batch is rejected."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))


def gpu_decode_works(device: torch.device | str) -> str | None:
    """None when :func:`decode_jpegs` decodes on ``device`` here, else why not (no CUDA, a
    torchvision built without nvJPEG, a driver too old): one tiny JPEG tells."""
    if torch.device(device).type != "cuda":
        return f"{device} is not a CUDA device"
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, "JPEG")
    try:
        decode_jpegs([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)
    except (RuntimeError, ImportError, AttributeError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def jpeg_or_why(path: Path) -> tuple[torch.Tensor | None, str]:
    """The file's bytes as a uint8 tensor if nvJPEG should decode it, else (None, why not)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\xff\xd8"):
        return None, "not a JPEG"
    with Image.open(io.BytesIO(data)) as im:  # header only: no pixels decoded
        if im.mode not in ("RGB", "L"):
            return None, f"{im.mode} JPEG"
        if im.width * im.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            return None, "larger than PIL's decompression-bomb limit"
        orientation = im.getexif().get(_ORIENTATION, 1)
        if orientation != 1:
            return None, f"EXIF orientation {orientation}"
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), ""


class JpegBytes(_DecodedImages):
    """Worker side of the GPU path: per sample ``(i, item, error)``, the item a JPEG's bytes
    (uint8 [n]) or, for a sample nvJPEG should not take, ``(pixels uint8 [3, H, W] decoded by
    PIL, why)``; an unreadable sample gives the error string, as on the CPU path."""

    def __init__(self, dataset: ImageDataset):
        super().__init__(dataset, None)

    def __getitem__(self, i):
        from torchvision.transforms.v2.functional import pil_to_tensor

        try:
            relpath = self.dataset.samples[i].relpath
            data, why = ((None, "not a file") if MEMBER_SEP in relpath
                         else jpeg_or_why(self.dataset.root / relpath))
            if data is not None:
                return i, data, ""
            return i, (pil_to_tensor(self.dataset.load_image(i)), why), ""
        except Exception as e:  # noqa: BLE001 — any decoder error means "unreadable file"
            return i, None, f"{type(e).__name__}: {e}"


def decode_batch(items: list, device: torch.device,
                 decode=decode_jpegs) -> tuple[list[torch.Tensor | None], list[str]]:
    """:class:`JpegBytes` items -> uint8 [3, H, W] tensors (on ``device`` where nvJPEG decoded
    them, else on the CPU), and per item why it was not decoded on the GPU ("" if it was);
    None where nvJPEG rejected a JPEG even alone (the caller decodes it with PIL)."""
    out: list[torch.Tensor | None] = [None] * len(items)
    why = [""] * len(items)
    jpegs = [k for k, x in enumerate(items) if isinstance(x, torch.Tensor)]
    for k, x in enumerate(items):
        if not isinstance(x, torch.Tensor):
            out[k], why[k] = x
    if not jpegs:
        return out, why
    try:
        for k, pixels in zip(jpegs, decode([items[k] for k in jpegs], device)):
            out[k] = pixels
    except RuntimeError:  # one bad image fails the whole batch: find it
        for k in jpegs:
            try:
                out[k] = decode([items[k]], device)[0]
            except RuntimeError as e:
                why[k] = f"nvJPEG rejected it: {str(e).splitlines()[0] if str(e) else e}"
    return out, why


def batch_pixels(batch: Batch, data: ImageDataset, transform: FloatTransform,
                 device: torch.device, decode=decode_jpegs) -> Batch:
    """A GPU-path batch made the model's input on ``device``: decoded (:func:`decode_batch`;
    PIL here for nvJPEG's rejects, recorded in ``cpu_decoded`` with the samples PIL decoded in
    the workers), transformed on the GPU (:func:`transform_on`), stacked. A sample PIL cannot
    read either moves to ``failed``, as on the CPU path."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    decoded, why = decode_batch(batch.items, device, decode)
    idx, pixels = [], []
    for i, x, reason in zip(batch.idx, decoded, why):
        if x is None:
            try:
                x = pil_to_tensor(data.load_image(i))
            except Exception as e:  # noqa: BLE001 — any decoder error means "unreadable file"
                batch.failed.append((i, f"{type(e).__name__}: {e}"))
                continue
        if reason:
            batch.cpu_decoded.append((i, reason))
        pixels.append(x)
        idx.append(i)
    batch.idx, batch.items, batch.failed = idx, None, sorted(batch.failed)
    batch.pixels = torch.stack(transform_on(pixels, transform, device)) if pixels else None
    return batch


def transform_on(images: list[torch.Tensor], transform: FloatTransform, device: torch.device,
                 group: int = 32) -> list[torch.Tensor]:
    """``transform`` on uint8 [3, H, W] images, on ``device``: images of one size go through it
    together, ``group`` at a time (a few kernel launches per group instead of per image, and
    float copies of at most ``group`` full-size images at once)."""
    out: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple, list[int]] = {}
    for k, x in enumerate(images):
        by_size.setdefault(tuple(x.shape), []).append(k)
    for ks in by_size.values():
        for s in range(0, len(ks), group):
            part = ks[s:s + group]
            x = torch.stack([images[k].to(device, non_blocking=True) for k in part])
            for k, y in zip(part, transform.on_tensor(x.float().div_(255))):
                out[k] = y
    return out


def gpu_decode_record(data: ImageDataset, chunks: list[Chunk]) -> dict:
    """What a cache records of the GPU path: how many images nvJPEG decoded, and which ones
    PIL decoded instead, and why (not a JPEG, CMYK, EXIF orientation, nvJPEG rejected it)."""
    pil = sorted((int(i), why) for c in chunks for i, why in c.cpu_decoded)
    return {"nvjpeg": sum(len(c.idx) for c in chunks) - len(pil),
            "pil": {"relpath": [data.samples[i].relpath for i, _ in pil],
                    "why": [why for _, why in pil]}}
