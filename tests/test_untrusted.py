"""Files from elsewhere run no code and cannot make vlmprobe write outside its output directory.

No pickle is ever loaded (npz files read with ``allow_pickle=False``: a crafted pickle-bearing
npz is refused, and the code its pickle carries never runs), checkpoints load with
``weights_only=True``, YAML only through the safe loader, and names from a cache or registry
that become file names are plain names.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

import vlmprobe
from vlmprobe.cache import read_cache
from vlmprobe.cache.chunks import MAGIC, decode_chunk
from vlmprobe.validation import VlmprobeError

from cli_helpers import cli

PACKAGE = Path(vlmprobe.__file__).parent


class _Payload:
    """Pickled, it makes a folder when unpickled: proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _pickle_npz(marker: Path, **plain) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, evil=np.array([_Payload(marker)], dtype=object), **plain)
    return buf.getvalue()


def test_no_loader_in_the_package_can_unpickle():
    """Every np.load passes allow_pickle=False, every torch.load weights_only=True, YAML is read
    by safe loaders only, and nothing calls pickle.load."""
    calls = {"np.load(": "allow_pickle=False", "torch.load(": "weights_only=True"}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for call, needed in calls.items():
            for m in re.finditer(re.escape(call), text):
                assert needed in text[m.start():text.index(")", m.start()) + 40], (path, call)
        assert not re.search(r"pickle\.loads?\(|yaml\.unsafe_load|yaml\.full_load", text), path
        for m in re.finditer(r"yaml\.load\(", text):  # only with vlmprobe's safe loader
            assert "_unique_keys_loader()" in text[m.start():m.start() + 120], path


def test_a_pickle_bearing_npz_is_refused_everywhere_vlmprobe_reads_one(tmp_path, phantom_cache):
    from vlmprobe.data import load_dataset
    from vlmprobe.probe.linear import LinearProbe

    marker = tmp_path / "pickle_ran"
    # a chunk file with a valid checksum (the checksum proves integrity, not origin)
    import hashlib

    payload = _pickle_npz(marker, idx=np.arange(2))
    chunk = tmp_path / "chunk-000000.bin"
    chunk.write_bytes(MAGIC + payload + hashlib.sha256(payload).digest())
    with pytest.raises(VlmprobeError, match="chunk-000000.bin holds data vlmprobe does not write"):
        decode_chunk(chunk)
    # a saved probe
    (tmp_path / "probe.npz").write_bytes(_pickle_npz(marker))
    (tmp_path / "probe.json").write_text('{"class_names": ["a", "b"]}')
    with pytest.raises(VlmprobeError, match="probe.npz is not a readable saved probe"):
        LinearProbe.load(tmp_path / "probe")
    # a MedMNIST file whose labels are a pickle
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "pneumoniamnist.npz",
             train_images=np.zeros((1, 28, 28), np.uint8),
             train_labels=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(VlmprobeError, match="allow_pickle=False"):
        load_dataset("pneumoniamnist", tmp_path / "mnist")
    # UMAP coordinates beside a cache
    from vlmprobe.maps.layout import _load

    (tmp_path / "coords.npz").write_bytes(_pickle_npz(marker, cache_key=np.array("k")))
    with pytest.raises(VlmprobeError, match="coords.npz is not a readable UMAP coordinates"):
        _load(tmp_path / "coords.npz", read_cache(phantom_cache[1]))
    assert not marker.exists()  # no pickle ran


@pytest.mark.parametrize("attr", ["dataset", "model"])
def test_a_cache_naming_a_path_cannot_make_a_stage_write_outside(attr, phantom_cache, tmp_path,
                                                                 capsys):
    cache_file = phantom_cache[1]
    with h5py.File(cache_file, "r+") as f:
        f.attrs[attr] = "../../outside"
    with pytest.raises(VlmprobeError, match=f"{attr} '../../outside' is not a plain name"):
        read_cache(cache_file)
    code, text = cli(capsys, "probe", str(cache_file), "--out", str(tmp_path / "out"))
    assert code == 2 and "is not a plain name" in text
    assert not (tmp_path.parent / "outside").exists() and not (tmp_path / "outside").exists()


def test_a_cache_whose_image_paths_leave_the_dataset_root_is_refused(phantom_cache):
    cache_file = phantom_cache[1]
    with h5py.File(cache_file, "r+") as f:
        paths = f["relpaths"][()]
        paths[0] = b"../../etc/passwd"
        f["relpaths"][...] = paths
    with pytest.raises(VlmprobeError, match="image path '../../etc/passwd' leaves the dataset"):
        read_cache(cache_file)
