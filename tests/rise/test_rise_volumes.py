"""RISE on volumes: s x s x s masks through the same estimator, with a tiny 3-D stand-in
encoder + probe whose evidence lies in a known box; maps saved as NIfTI and drawn through it."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from vlmprobe.figures import save_figure
from vlmprobe.rise import RiseConfig, iter_masks, mass_in_region, pointing_game, rise_saliency
from vlmprobe.rise.volumes import save_volume_map, volume_map_figure
from vlmprobe.validation import VlmprobeError

SIZE = (24, 20, 16)
BOX = (slice(14, 20), slice(4, 10), slice(8, 13))  # the "lesion" the stand-in looks at


class StandIn(torch.nn.Module):
    """A 3-D conv encoder (fixed weights: a 3 x 3 x 3 mean filter) and a linear probe whose
    class-1 score is the filtered intensity inside BOX, class 0 its negative."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1 / 27)
        self.region = torch.zeros(SIZE)
        self.region[BOX] = 1 / self.region[BOX].numel()

    def forward(self, x):  # [b, 1, X, Y, Z] -> [b, 2]
        lesion = (self.conv(x)[:, 0] * self.region).sum(dim=(1, 2, 3))
        return torch.stack([-lesion, lesion], dim=1)


def test_3d_masks_are_seeded_and_batch_independent():
    cfg = RiseConfig(n_masks=30, s=4, p=0.5, seed=2, batch_size=7)
    masks = torch.cat(list(iter_masks(cfg, SIZE)))
    again = torch.cat(list(iter_masks(RiseConfig(n_masks=30, s=4, p=0.5, seed=2,
                                                 batch_size=30), SIZE)))
    assert masks.shape == (30, 1, *SIZE) and torch.allclose(masks, again, atol=1e-6)
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.1
    with pytest.raises(VlmprobeError, match="2-D or 3-D"):
        next(iter_masks(cfg, (4, 4, 4, 4)))


def test_3d_masks_are_built_one_axis_at_a_time_at_merlins_size():
    """The separable upsampling of each axis, as one four-operand einsum would compute it; at
    Merlin's 224 x 224 x 160 input that einsum's intermediate needed 65 GB for one batch."""
    from vlmprobe.rise.saliency import _upsampling_matrix

    cfg = RiseConfig(n_masks=3, s=3, seed=4)
    size = (8, 6, 5)
    masks = torch.cat(list(iter_masks(cfg, size)))[:, 0]
    gen = torch.Generator().manual_seed(cfg.seed)  # the draws iter_masks makes, in its order
    grids = (torch.rand(3, 3, 3, 3, generator=gen) < cfg.p).float()
    cell = [-(-n // cfg.s) for n in size]
    shifts = [torch.randint(0, c, (3, 1), generator=gen) + torch.arange(n)
              for c, n in zip(cell, size)]
    rows = [_upsampling_matrix(cfg.s, (cfg.s + 1) * c)[d] for c, d in zip(cell, shifts)]
    naive = torch.einsum("bxi,byj,bzk,bijk->bxyz", *rows, grids).clamp(0, 1)
    assert torch.allclose(masks, naive, atol=1e-6)
    big = RiseConfig(n_masks=2, s=8)
    assert big.resolved(torch.device("cpu"), (224, 224, 160)).batch_size == 1
    assert big.resolved(torch.device("cuda"), (224, 224, 160)).batch_size == 1
    assert big.resolved(torch.device("cpu"), (224, 224)).batch_size == 64
    first = next(iter_masks(big, (224, 224, 160)))
    assert first.shape == (1, 1, 224, 224, 160)


def test_volume_map_finds_the_evidence_box(tmp_path):
    nib = pytest.importorskip("nibabel")
    volume = torch.rand(1, *SIZE, generator=torch.Generator().manual_seed(0)) + 0.5
    model = StandIn()
    res = rise_saliency(model, volume, RiseConfig(n_masks=600, s=4, seed=1))
    assert res.saliency.shape == (2, *SIZE) and res.coverage.shape == SIZE
    region = np.zeros(SIZE, bool)
    region[BOX] = True
    centred = res.centred()
    assert pointing_game(centred[1], region)
    # the box is 3.75% of the voxels; smooth masks spread its evidence about a cell around it
    assert mass_in_region(centred[1], region) > 3 * region.mean()
    assert mass_in_region(centred[0], region) < region.mean()  # class 0: the box lowers it
    assert res.split_half_r[1] > 0.5
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    path = save_volume_map(res, affine, tmp_path / "map.nii.gz", target=1)
    saved = nib.load(path)
    assert np.allclose(saved.affine, affine) and np.allclose(saved.get_fdata(), centred[1])
    centre = [(s.start + s.stop - 1) / 2 for s in BOX]
    fig = volume_map_figure(volume[0].numpy() / 1.5, res, (1.5, 1.5, 3.0), 1, centre, "stand-in")
    assert len(save_figure(fig, tmp_path / "map", {"stage": "rise"})) == 2
    with pytest.raises(VlmprobeError, match="fill='blur' blurs 2-D images"):
        rise_saliency(model, volume, RiseConfig(n_masks=4, s=2, fill="blur"))


@pytest.fixture(scope="module")
def ct3d_probed(tmp_path_factory):
    """The ct3d phantom (16 volumes, NIfTI and DICOM series) through ct_32_random at default
    extraction settings, and its class probe."""
    pytest.importorskip("merlin")
    pytest.importorskip("nibabel")
    from tiny_models import CT

    from conftest import write_tiny_registry
    from vlmprobe import extract, make_phantom, run_probe

    folder = tmp_path_factory.mktemp("ct3d")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMPROBE_REGISTRY", str(write_tiny_registry(folder)))
        root = make_phantom("ct3d", folder / "ct3d", n=16, seed=0, progress=False)
        cache = extract(f"{CT}_random", "ct3d", root=root, out=folder / "out", progress=False)
        run_probe([cache.path], out=folder / "out", n_bootstrap=50)
    return folder, root, cache


@pytest.mark.slow
def test_vlmprobe_rise_explains_whole_volumes_in_the_models_grid(ct3d_probed, monkeypatch):
    """`vlmprobe rise` on a whole-volume cache: 3-D masks through the real 3-D tower, maps as
    NIfTI placed by the transformed volume's affine, the lesion mask carried onto the model's
    grid and scored, one figure per volume and the overview."""
    from typer.testing import CliRunner

    from tiny_models import CT
    from vlmprobe.cache import read_cache
    from vlmprobe.cli import app
    from vlmprobe.data.volumes import load_volume
    from vlmprobe.encoders.merlin_family import MerlinTransform
    from vlmprobe.registry import get_model_entry

    nib = pytest.importorskip("nibabel")
    folder, root, extracted = ct3d_probed
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(folder / "tiny_registry.yaml"))
    cache = read_cache(extracted.path)
    assert cache.batch_size == 1  # whole volumes: one per batch unless asked
    lesion = next(r for r in cache.relpaths if r.startswith("lesion/"))
    out = folder / "out"
    done = CliRunner().invoke(app, ["rise", str(extracted.path), "--out", str(out), "--ids",
                                    lesion, "--n-masks", "24", "--s", "4", "--causal-steps", "3",
                                    "--include-baselines", "--root", str(root)])
    assert done.exit_code == 0, done.output
    assert "every mask a full forward" in done.output  # the cost, said before the work
    rise = out / "ct3d" / "rise"
    rows = list(csv.DictReader(open(rise / f"{CT}_random.csv")))
    assert [r["relpath"] for r in rows] == [lesion]
    row = rows[0]
    # the lesion is carried onto the 32 x 32 x 16 grid, so its numbers exist
    assert 0 < float(row["lesion_area"]) < 0.01 and row["lesion_mass"] != ""
    assert row["text_mass"] == "" and float(row["unseen_fraction"]) == 0
    assert 0 <= float(row["deletion_auc"]) <= 1 and 0 <= float(row["insertion_auc"]) <= 1
    maps = np.load(rise / f"{CT}_random.maps.npz")
    assert maps["input_0"].shape == (1, 32, 32, 16)
    transform = MerlinTransform(get_model_entry(CT).preprocess)
    volume_file = root / lesion.removesuffix("#volume")
    affine = np.asarray(transform.meta(load_volume(volume_file)).affine, float)
    assert np.allclose(maps["affine_0"], affine)
    panel = next((rise / f"{CT}_random.panels").glob("000-*.class.nii.gz"))
    saved = nib.load(panel)
    assert np.allclose(saved.affine, affine) and np.allclose(saved.get_fdata(), maps["input_0"][0])
    assert len(list((rise / f"{CT}_random.panels").glob("*.random-probe.nii.gz"))) == 1
    assert len(list((rise / f"{CT}_random.panels").glob("000-*.png"))) == 1
    assert (rise / f"{CT}_random.png").stat().st_size > 10_000
    # a mask that went missing stops the run before its first mask, naming the file; the
    # outputs of the run before stay as they were
    table = (rise / f"{CT}_random.csv").read_bytes()
    mask = root / cache.metadata["mask"][cache.relpaths.index(lesion)]
    mask.rename(mask.with_name("moved.nii.gz"))
    try:
        again = CliRunner().invoke(app, ["rise", str(extracted.path), "--out", str(out), "--ids",
                                         lesion, "--n-masks", "24", "--s", "4",
                                         "--include-baselines", "--root", str(root)])
    finally:
        mask.with_name("moved.nii.gz").rename(mask)
    assert again.exit_code != 0 and str(mask) in again.output + str(again.exception)
    assert "every mask a full forward" not in again.output
    assert (rise / f"{CT}_random.csv").read_bytes() == table


def test_a_lesion_mask_lands_on_the_models_grid_even_below_its_voxel_size(tmp_path):
    """Carried as the image is (interpolated overlap, at least half inside); a lesion smaller
    than the model's voxels keeps the voxel it overlaps most instead of vanishing."""
    pytest.importorskip("monai")
    from vlmprobe.data.volumes import Volume
    from vlmprobe.encoders.merlin_family import MerlinTransform
    from vlmprobe.registry import get_model_entry

    mask = np.zeros((96, 96, 40), np.float32)
    mask[40:48, 50:58, 18:22] = 1  # 8 x 8 x 4 voxels of 3.2 x 3.2 x 5 mm: 13,107 mm3
    volume = Volume(mask, np.diag([3.2, 3.2, 5.0, 1.0]), "mask")
    merlin = MerlinTransform(get_model_entry("astra").preprocess)  # 1.5 x 1.5 x 3 mm
    seen = merlin.mask(volume)
    assert seen.shape == (224, 224, 160)
    assert abs(seen.sum() * 1.5 * 1.5 * 3 / 13107 - 1) < 0.2  # the same volume in mm3
    coarse = get_model_entry("astra").preprocess
    coarse = type(coarse)(**{**coarse.__dict__, "spacing": (40.0, 40.0, 40.0),
                             "volume_size": (8, 8, 5)})
    small = MerlinTransform(coarse).mask(volume)
    assert small.sum() >= 1  # 1 of a 40 mm voxel's 64,000 mm3 would round away


def test_vlmprobe_rise_refuses_black_fill_on_volumes_with_the_fill_to_use():
    from vlmprobe.cache import Cache
    from vlmprobe.rise import explain_cache

    cache = Cache(np.zeros((2, 4), np.float32), np.array([0, 1]),
                  ["a/v0.nii.gz#volume", "b/v1#volume"], ["a", "b"], "astra", "ct3d", "f", "k")
    with pytest.raises(VlmprobeError, match="holds whole volumes: fill='black'.*fill='mean'"):
        explain_cache(cache, RiseConfig(fill="black"))
