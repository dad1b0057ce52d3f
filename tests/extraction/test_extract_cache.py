import h5py
import numpy as np
import pytest

from vlmprobe.cache import SCHEMA_VERSION, read_cache
from vlmprobe.extraction import extract
from vlmprobe.validation import VlmprobeError


@pytest.fixture
def extracted(tiny_busi, tmp_path):
    (tiny_busi / "benign" / "benign (99).png").write_bytes(b"not an image")
    r = extract("efficientnet_lite0", "breastus", root=tiny_busi, out=tmp_path / "cache",
                batch_size=8, num_workers=0, progress=False)
    return r, tiny_busi, tmp_path / "cache"


def test_cache_roundtrip_and_provenance(extracted, lite0):
    r, root, _ = extracted
    assert r.status == "written" and r.n_images == 30 and r.n_skipped == 1
    c = read_cache(r.path)
    assert c.embeddings.shape == (30, 1280) and c.embeddings.dtype == np.float32
    assert c.class_names == ["normal", "benign", "malignant"]
    assert c.skipped["relpath"] == ["benign/benign (99).png"]
    assert "benign (99).png is not an image PIL can read" in c.skipped["error"][0]
    assert len(c.files["relpath"]) == 31  # the fingerprint covers the unreadable file too
    assert set(c.metadata) == {"mask_paths"}
    prov = c.attrs["provenance"]
    for key in ("vlmprobe_version", "packages", "time_utc", "command_line", "git_commit"):
        assert key in prov
    assert c.attrs["encoder"]["weights_sha256"] == lite0.weights_sha256_
    assert c.attrs["encoder"]["entry"]["preprocess"]["image_size"] == 224
    assert c.attrs["baseline"] is False
    with h5py.File(r.path) as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
    # The embeddings are the encoder's, image by image.
    from vlmprobe.data import read_image

    i = c.relpaths.index("malignant/malignant (3).png")
    x = lite0.transform_(read_image(root / c.relpaths[i]))[None]
    np.testing.assert_allclose(c.embeddings[i], lite0.encode_images(x)[0].numpy(), rtol=1e-4, atol=1e-5)


def test_rerun_is_up_to_date_and_changed_dataset_is_refused(extracted):
    r, root, out = extracted
    again = extract("efficientnet_lite0", "breastus", root=root, out=out, num_workers=0, progress=False)
    assert again.status == "up to date"
    (root / "benign" / "benign (99).png").unlink()
    with pytest.raises(VlmprobeError, match="dataset files changed.*--force"):
        extract("efficientnet_lite0", "breastus", root=root, out=out, num_workers=0, progress=False)
    forced = extract("efficientnet_lite0", "breastus", root=root, out=out, num_workers=0,
                     progress=False, force=True)
    assert forced.status == "written" and forced.n_skipped == 0


def test_probe_refuses_caches_of_one_dataset_from_different_files(extracted, tmp_path):
    from vlmprobe.probe import run_probe

    r, root, out = extracted
    (root / "benign" / "benign (99).png").unlink()
    other = extract("efficientnet_lite0_random", "breastus", root=root, out=out, num_workers=0,
                    progress=False)
    with pytest.raises(VlmprobeError, match="different files.*benign \\(99\\)"):
        run_probe([read_cache(r.path), read_cache(other.path)])


def test_corrupt_cache_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(VlmprobeError, match="not a readable vlmprobe cache"):
        read_cache(bad)
