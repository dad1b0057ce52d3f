"""RISE on volumes: s x s x s masks through the same estimator, with a tiny 3-D stand-in
encoder + probe whose evidence lies in a known box; maps saved as NIfTI and drawn through it."""
from __future__ import annotations

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


def test_vlmprobe_rise_refuses_a_whole_volume_cache_with_the_way_to_do_it():
    from vlmprobe.cache import Cache
    from vlmprobe.rise import explain_cache

    cache = Cache(np.zeros((2, 4), np.float32), np.array([0, 1]),
                  ["a/v0.nii.gz#volume", "b/v1#volume"], ["a", "b"], "astra", "ct3d", "f", "k")
    with pytest.raises(VlmprobeError, match="holds whole volumes.*rise_saliency on its "
                                            "transformed tensor"):
        explain_cache(cache)
