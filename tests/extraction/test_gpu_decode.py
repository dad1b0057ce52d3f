"""The GPU path of --fast-decode without a GPU: when it is chosen, what the workers send, how a
batch that the JPEG decoder rejects falls back image by image and then to PIL, and the whole
path through ``extract`` with torchvision's CPU decoder (libjpeg-turbo, as PIL) standing in for
nvJPEG: counted, recorded (shards merged too), within cosine 0.999 of the exact path."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from extract_helpers import MODEL
from vlmprobe.cache import read_cache
from vlmprobe.cache.tools import compare_caches
from vlmprobe.data import load_dataset
from vlmprobe.encoders import load_encoder
from vlmprobe.encoders.transforms import tensor_transform
from vlmprobe.extraction import extract
from vlmprobe.extraction import engine
from vlmprobe.extraction.batches import _Collate
from vlmprobe.extraction.gpu_decode import (
    JpegBytes,
    batch_pixels,
    transform_on,
    choose_gpu_decode,
    decode_batch,
    decode_jpegs,
    gpu_decode_works,
    jpeg_or_why,
)
from vlmprobe.registry import get_dataset_entry

CPU = torch.device("cpu")


def _photo(rng, h=192, w=256) -> Image.Image:
    smooth = np.kron(rng.integers(0, 255, (h // 32, w // 32, 3)), np.ones((32, 32, 1)))
    return Image.fromarray(np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255)
                           .astype(np.uint8))


def _rotated(im: Image.Image, path, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=90, exif=exif)


def _progressive_rejected(data, device):
    """A stand-in for nvJPEG's rejects: the real JPEG decoder, refusing progressive files
    (SOF2), as nvJPEG refuses what its backend cannot take, for the whole batch."""
    if any(b"\xff\xc2" in bytes(d.numpy()) for d in data):
        raise RuntimeError("nvjpeg: unsupported JPEG (progressive)")
    return decode_jpegs(data, device)


@pytest.fixture
def mixed(tmp_path, tiny_model):
    """brainmr layout, 4 classes x 3 files: plain, grey, progressive, EXIF-rotated, CMYK JPEGs, a
    PNG and a truncated JPEG; returns (root, {kind: relpath})."""
    rng = np.random.default_rng(0)
    root = tmp_path / "brainmr"
    classes = get_dataset_entry("brainmr").classes
    kinds = {}
    for c in classes:
        (root / c).mkdir(parents=True)
    for n in range(12):
        c = classes[n % 4]
        im = _photo(rng)
        kind = ("plain", "grey", "progressive", "rotated", "cmyk", "png", "truncated",
                "plain", "plain", "plain", "plain", "plain")[n]
        path = root / c / f"{n:02d}.{'png' if kind == 'png' else 'jpg'}"
        if kind == "grey":
            im.convert("L").save(path, quality=90)
        elif kind == "progressive":
            im.save(path, quality=90, progressive=True)
        elif kind == "rotated":
            _rotated(im, path)
        elif kind == "cmyk":
            im.convert("CMYK").save(path, quality=90)
        elif kind == "truncated":
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        else:
            im.save(path, quality=90)
        kinds.setdefault(kind, path.relative_to(root).as_posix())
    return root, kinds


def test_workers_send_jpeg_bytes_only_where_nvjpeg_should_take_them(mixed):
    root, kinds = mixed
    data, why = jpeg_or_why(root / kinds["plain"])
    assert data.dtype == torch.uint8 and bytes(data[:2].numpy()) == b"\xff\xd8" and why == ""
    assert jpeg_or_why(root / kinds["grey"])[1] == ""
    assert jpeg_or_why(root / kinds["png"]) == (None, "not a JPEG")
    assert jpeg_or_why(root / kinds["cmyk"]) == (None, "CMYK JPEG")
    assert jpeg_or_why(root / kinds["rotated"]) == (None, "EXIF orientation 6")
    ds = load_dataset("brainmr", root)
    items = {ds.samples[i].relpath: JpegBytes(ds)[i] for i in range(len(ds))}
    pixels, reason = items[kinds["png"]][1]  # decoded by PIL in the worker, as the exact path
    assert pixels.shape == (3, 192, 256) and pixels.dtype == torch.uint8 and reason == "not a JPEG"
    assert isinstance(items[kinds["truncated"]][1], torch.Tensor)  # only the decoder can tell


def test_a_rejected_batch_is_decoded_image_by_image(mixed):
    root, kinds = mixed
    files = [root / kinds[k] for k in ("plain", "grey", "truncated", "progressive")]
    data = [jpeg_or_why(f)[0] for f in files]
    out, why = decode_batch(data, CPU)  # the truncated file fails the batch, then only itself
    assert out[2] is None and why[2].startswith("nvJPEG rejected it") and why[:2] == ["", ""]
    for k in (0, 1, 3):  # libjpeg-turbo here: PIL's pixels exactly
        np.testing.assert_array_equal(out[k].permute(1, 2, 0).numpy(),
                                      np.asarray(Image.open(files[k]).convert("RGB")))
    out, why = decode_batch(data, CPU, decode=_progressive_rejected)
    assert out[3] is None and "progressive" in why[3] and out[0] is not None


def test_batch_pixels_falls_back_to_pil_and_records_why(mixed):
    root, kinds = mixed
    ds = load_dataset("brainmr", root)
    encoder = load_encoder(MODEL, "cpu")
    transform = tensor_transform(encoder.transform_, MODEL)
    images = JpegBytes(ds)
    batch = _Collate(stack=False)(images.__getitems__(range(len(ds))))
    assert batch.items is not None and batch.pixels is None
    batch = batch_pixels(batch, ds, transform, CPU, decode=_progressive_rejected)
    rel = {i: ds.samples[i].relpath for i in range(len(ds))}
    assert [rel[i] for i, _ in batch.failed] == [kinds["truncated"]]  # PIL cannot read it either
    assert "truncated" in batch.failed[0][1]
    reasons = {rel[i]: why for i, why in batch.cpu_decoded}
    assert reasons[kinds["png"]] == "not a JPEG" and reasons[kinds["cmyk"]] == "CMYK JPEG"
    assert reasons[kinds["rotated"]] == "EXIF orientation 6"
    assert reasons[kinds["progressive"]].startswith("nvJPEG rejected it")
    assert len(reasons) == 4 and batch.pixels.shape == (11, 3, 64, 64)
    # every image within a grey level or two of the official transform (PIL resize, 8-bit)
    for k, i in enumerate(batch.idx):
        official = encoder.transform_(ds.load_image(i))
        assert (batch.pixels[k] - official).abs().max() < 4 / 255 / 0.224


def test_images_of_one_size_are_transformed_together_as_one_by_one(tiny_model):
    transform = tensor_transform(load_encoder(MODEL, "cpu").transform_, MODEL)
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 256, (3, *hw), dtype=np.uint8))
              for hw in ((90, 120), (120, 90), (90, 120), (90, 120), (120, 90))]
    together = transform_on(images, transform, CPU, group=2)
    for x, y in zip(images, together):
        one = transform.on_tensor(x.float() / 255)
        assert y.shape == one.shape == (3, 64, 64)
        torch.testing.assert_close(y, one, rtol=0, atol=1e-6)


def test_gpu_path_is_chosen_only_where_it_can_run(mixed, tmp_path):
    root, _ = mixed
    encoder = load_encoder(MODEL, "cpu")
    jpegs = load_dataset("brainmr", root)
    assert choose_gpu_decode(False, encoder, jpegs) == (None, "exact decoding asked for")
    assert choose_gpu_decode(True, encoder, jpegs)[1] == "the model runs on cpu, not a CUDA GPU"
    assert tensor_transform(encoder.transform_, MODEL) is not None
    floats = load_dataset("brainmr", root, intensity="float")
    assert choose_gpu_decode(True, encoder, floats)[1] == "--intensity float"
    pngs = tmp_path / "pngs"
    (pngs / "glioma_tumor").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(pngs / "glioma_tumor" / "a.png")
    assert "no .jpg" in choose_gpu_decode(True, encoder, load_dataset("brainmr", pngs))[1]
    encoder.transform_ = lambda image: image  # e.g. a transformers image processor
    assert "Resize" in choose_gpu_decode(True, encoder, jpegs)[1]
    assert tensor_transform(encoder.transform_, MODEL) is None
    if not torch.cuda.is_available():
        assert gpu_decode_works("cpu") == "cpu is not a CUDA device"


@pytest.mark.slow
def test_gpu_path_through_extract_with_the_cpu_decoder(mixed, tmp_path, monkeypatch):
    """The whole GPU path (workers reading bytes, batch decode, fallbacks, transform on tensors,
    chunks, the cache's record) on the CPU, libjpeg-turbo standing in for nvJPEG."""
    root, kinds = mixed

    def on_this_cpu(fast_decode, encoder, data):
        return tensor_transform(encoder.transform_, encoder.entry.name), ""

    kw = dict(root=root, batch_size=4, num_workers=1, progress=False)
    exact = read_cache(extract(MODEL, "brainmr", out=tmp_path / "exact", **kw).path)
    monkeypatch.setattr(engine, "choose_gpu_decode", on_this_cpu)
    monkeypatch.setattr(engine, "batch_pixels", lambda b, d, t, dev: batch_pixels(
        b, d, t, dev, decode=_progressive_rejected))
    gpu = read_cache(extract(MODEL, "brainmr", out=tmp_path / "gpu", fast_decode=True,
                             **kw).path)
    assert "fast decode on GPU" in gpu.attrs["intensity_pipeline"]
    assert gpu.cache_key != exact.cache_key and gpu.attrs["provenance"]["fast_decode"] == "gpu"
    record = gpu.attrs["gpu_decode"]
    assert record["nvjpeg"] == 7 and len(record["pil"]["relpath"]) == 4
    assert dict(zip(record["pil"]["relpath"], record["pil"]["why"]))[kinds["cmyk"]] == "CMYK JPEG"
    assert gpu.skipped["relpath"] == exact.skipped["relpath"] == [kinds["truncated"]]
    cmp = compare_caches(exact, gpu)
    assert cmp["n_common"] == 11 and cmp["cosine"]["min"] > 0.999
    # two shards: the merged cache's record is the single run's
    for i in range(2):
        r = extract(MODEL, "brainmr", out=tmp_path / "shards", fast_decode=True, shard=f"{i}/2",
                    **kw)
    merged = read_cache(r.merged)
    assert merged.attrs["gpu_decode"] == record
    assert merged.embeddings.tobytes() == gpu.embeddings.tobytes()
