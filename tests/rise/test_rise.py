import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmprobe.rise import (RiseConfig, deletion_insertion_auc, iter_masks, mass_in_region, plot_rise_grid, plot_rise_panels, pointing_game, rise_saliency)
from vlmprobe.rise.saliency import gaussian_blur
from vlmprobe.validation import VlmprobeError

H = W = 32
SQUARE = (slice(6, 16), slice(18, 28))    # class 0 looks here
SQUARE_B = (slice(20, 28), slice(4, 12))  # class 1 looks here


def square_box(batch: torch.Tensor) -> torch.Tensor:
    """A black box whose class scores are the mean intensity inside two known squares."""
    return torch.stack([batch[:, :, SQUARE[0], SQUARE[1]].mean((1, 2, 3)),
                        batch[:, :, SQUARE_B[0], SQUARE_B[1]].mean((1, 2, 3))], dim=1)


def region(sq) -> np.ndarray:
    out = np.zeros((H, W), bool)
    out[sq] = True
    return out


@pytest.fixture(scope="module")
def square_result():
    return rise_saliency(square_box, torch.ones(3, H, W), RiseConfig(n_masks=1000, seed=1))


def test_saliency_finds_the_square(square_result):
    for c, sq in enumerate((SQUARE, SQUARE_B)):
        sal = square_result.saliency[c]
        assert pointing_game(sal, region(sq))
        k = region(sq).sum()
        top = np.zeros(H * W, bool)
        top[np.argsort(-sal.ravel())[:k]] = True
        inter = (top & region(sq).ravel()).sum()
        assert inter / (2 * k - inter) >= 0.5  # IoU of the top-k pixels with the square
    assert square_result.saliency.dtype == np.float32 and square_result.saliency.shape == (2, H, W)
    assert (square_result.split_half_r > 0.8).all()
    np.testing.assert_allclose(square_result.base_scores, [1.0, 1.0])


def test_seed_determines_the_map_and_batch_size_does_not():
    pixels = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    run = lambda **kw: rise_saliency(square_box, pixels, RiseConfig(n_masks=200, **kw)).saliency
    a = run(seed=3, batch_size=64)
    np.testing.assert_array_equal(a, run(seed=3, batch_size=64))
    np.testing.assert_allclose(a, run(seed=3, batch_size=7), rtol=0, atol=1e-5)
    assert np.abs(a - run(seed=4, batch_size=64)).max() > 1e-3


def test_masks_shape_range_mean_and_chunking():
    cfg = RiseConfig(n_masks=300, s=8, p=0.3, batch_size=64)
    chunks = list(iter_masks(cfg, (H, 48)))
    masks = torch.cat(chunks)
    assert [len(c) for c in chunks] == [64, 64, 64, 64, 44]
    assert masks.shape == (300, 1, H, 48) and masks.dtype == torch.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.03
    again = torch.cat(list(iter_masks(RiseConfig(n_masks=300, s=8, p=0.3, batch_size=7), (H, 48))))
    torch.testing.assert_close(masks, again, rtol=0, atol=0)


def test_masks_are_petsiuk_upsample_then_crop():
    """The matmul form equals the reference code's upsampling, skimage's order-1 resize with
    mode="reflect" to (s+1)*ceil(H/s), cropped at the shift (at the border it mirrors the grid,
    where F.interpolate would hold the outer cell's value)."""
    from skimage.transform import resize

    n, s, (h, w) = 40, 5, (37, 29)
    masks = torch.cat(list(iter_masks(RiseConfig(n_masks=n, s=s, seed=3, batch_size=16), (h, w))))
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order, as iter_masks
    grids = (torch.rand(n, s, s, generator=gen) < 0.5).float()
    dy = torch.randint(0, 8, (n, 1), generator=gen)[:, 0]   # ceil(37 / 5) = 8
    dx = torch.randint(0, 6, (n, 1), generator=gen)[:, 0]   # ceil(29 / 5) = 6
    big = [resize(g.numpy().astype(np.float64), (6 * 8, 6 * 6), order=1, mode="reflect",
                  anti_aliasing=False) for g in grids]
    ref = torch.stack([torch.as_tensor(big[k][None, dy[k]:dy[k] + h, dx[k]:dx[k] + w],
                                       dtype=torch.float32) for k in range(n)])
    torch.testing.assert_close(masks, ref, rtol=0, atol=1e-6)
    clamped = F.interpolate(grids[:, None], size=(48, 36), mode="bilinear", align_corners=False)
    assert not torch.allclose(clamped[:, :, :h, :w], torch.as_tensor(np.stack(big))[:, None, :h, :w]
                              .float(), atol=1e-3)


def _recording_box(seen: list):
    def box(batch):
        seen.append(batch.clone())
        return batch.mean((1, 2, 3))[:, None]
    return box


def test_fill_mean_multiplies_and_black_fills_with_the_value():
    cfg = RiseConfig(n_masks=20, batch_size=8)
    masks = torch.cat(list(iter_masks(cfg, (H, W))))
    pixels = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))
    seen = []
    rise_saliency(_recording_box(seen), pixels, cfg)
    torch.testing.assert_close(torch.cat(seen[1:]), pixels * masks)  # seen[0] is the unmasked image
    black = torch.tensor([-2.0, -1.5, -1.0])
    seen = []
    res = rise_saliency(_recording_box(seen), torch.zeros(3, H, W),
                        RiseConfig(n_masks=20, batch_size=8, fill="black"), fill_value=black)
    torch.testing.assert_close(torch.cat(seen[1:]), black.reshape(3, 1, 1) * (1 - masks))
    assert res.config["fill_value"] == [-2.0, -1.5, -1.0] and res.config["fill"] == "black"
    with pytest.raises(VlmprobeError, match="fill_value"):
        rise_saliency(_recording_box([]), pixels, RiseConfig(n_masks=20, fill="black"))


def test_fill_blur_takes_masked_pixels_from_the_blurred_image():
    from scipy.ndimage import gaussian_filter

    pixels = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))
    sigma = 0.1 * H
    blurred = gaussian_blur(pixels, sigma)
    ref = np.stack([gaussian_filter(c, sigma, mode="nearest", truncate=3.0)
                    for c in pixels.numpy().astype(np.float64)])
    np.testing.assert_allclose(blurred.numpy(), ref, atol=1e-5)
    # linear, weights sum to 1: blurring commutes with the per-channel normalization
    a, b = torch.tensor([2.0, 0.5, 3.0]).view(3, 1, 1), torch.tensor([-1.0, 0.2, 0.7]).view(3, 1, 1)
    torch.testing.assert_close(gaussian_blur(a * pixels + b, sigma), a * blurred + b)
    cfg = RiseConfig(n_masks=20, batch_size=8, fill="blur", blur_sigma=0.1)
    masks = torch.cat(list(iter_masks(cfg, (H, W))))
    seen = []
    res = rise_saliency(_recording_box(seen), pixels, cfg)
    torch.testing.assert_close(torch.cat(seen[1:]), pixels * masks + blurred * (1 - masks))
    assert res.config["fill"] == "blur" and res.config["blur_sigma_px"] == pytest.approx(sigma)
    with pytest.raises(VlmprobeError, match="fill_value"):
        rise_saliency(_recording_box([]), pixels, cfg, fill_value=[0.0, 0.0, 0.0])


def detail_box(batch: torch.Tensor) -> torch.Tensor:
    """A black box that reads detail, not brightness: the texture energy (squared deviation
    from the 3 x 3 local mean) inside the two known squares. A blurred fill removes exactly that."""
    local = F.avg_pool2d(batch, 3, stride=1, padding=1, count_include_pad=False)
    energy = ((batch - local) ** 2).mean(1)
    return torch.stack([energy[:, SQUARE[0], SQUARE[1]].mean((1, 2)),
                        energy[:, SQUARE_B[0], SQUARE_B[1]].mean((1, 2))], dim=1)


def test_blur_fill_finds_the_square_a_detail_reading_box_looks_at():
    noise = torch.rand(3, H, W, generator=torch.Generator().manual_seed(5))
    res = rise_saliency(detail_box, noise, RiseConfig(n_masks=1000, seed=1, fill="blur",
                                                      blur_sigma=0.1))
    for c, sq in enumerate((SQUARE, SQUARE_B)):
        sal = res.centred()[c]
        k = region(sq).sum()
        top = np.zeros(H * W, bool)
        top[np.argsort(-sal.ravel())[:k]] = True
        inter = (top & region(sq).ravel()).sum()
        assert inter / (2 * k - inter) >= 0.5  # IoU of the top-k pixels with the square
        assert pointing_game(sal, region(sq))


def test_softmax_maps_sum_to_the_mask_coverage():
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    box = lambda b: torch.cat([square_box(b), b.mean((2, 3))], 1)[:, :3] @ weights * 5
    res = rise_saliency(box, torch.rand(3, H, W), RiseConfig(n_masks=256, score="softmax"))
    assert res.saliency.shape == (3, H, W)
    np.testing.assert_allclose(res.saliency.sum(0), res.coverage, atol=1e-5)
    np.testing.assert_allclose(res.centred().sum(0), 0.0, atol=1e-5)
    assert abs(res.coverage.mean() - 1.0) < 0.05
    np.testing.assert_allclose(res.base_scores.sum(), 1.0)


def test_softmax_is_taken_within_each_probe_and_batch_size_is_chosen():
    """Several probes scored on the same masks: each block of columns is its own softmax."""
    box = lambda b: torch.cat([square_box(b) * 5, square_box(b).flip(1) * 3,
                               b.mean((2, 3)) * torch.tensor([1.0, 2.0, 3.0])], dim=1)
    res = rise_saliency(box, torch.rand(3, H, W), RiseConfig(n_masks=128, score="softmax"),
                        groups=[2, 2, 3])
    for block in (slice(0, 2), slice(2, 4), slice(4, 7)):
        np.testing.assert_allclose(res.saliency[block].sum(0), res.coverage, atol=1e-5)
    assert res.config["batch_size"] == 64  # None: chosen for the CPU, and recorded
    with pytest.raises(VlmprobeError, match="groups"):
        rise_saliency(box, torch.rand(3, H, W), RiseConfig(n_masks=8, score="softmax"),
                      groups=[2, 2])


def test_centred_map_and_mass_in_region(square_result):
    raw, centred = square_result.saliency[0], square_result.centred()[0]
    inside = region(SQUARE)
    # the raw map's offset (mean score 0.5) spreads positive mass over the whole image
    assert mass_in_region(raw, inside) < 0.3 < 0.5 < mass_in_region(centred, inside)


def test_mass_in_region_and_pointing_game_on_handmade_maps():
    sal = np.zeros((4, 4))
    sal[0, 0], sal[3, 3], sal[1, 1] = 3.0, 1.0, -5.0
    reg = np.zeros((4, 4), bool)
    reg[:2, :2] = True
    assert mass_in_region(sal, reg) == pytest.approx(0.75)  # negatives do not count
    assert pointing_game(sal, reg)
    sal[0, 0] = np.nan  # unseen: ignored by both
    assert mass_in_region(sal, reg) == 0.0
    assert not pointing_game(sal, reg)
    assert np.isnan(mass_in_region(-np.ones((4, 4)), reg))
    with pytest.raises(VlmprobeError, match="NaN everywhere"):
        pointing_game(np.full((4, 4), np.nan), reg)
    with pytest.raises(VlmprobeError, match="shape"):
        mass_in_region(np.zeros((4, 5)), reg)


def test_deletion_insertion_rank_a_good_map_above_a_bad_one():
    good = region(SQUARE).astype(float)
    cfg = RiseConfig(batch_size=16)
    auc = lambda m: deletion_insertion_auc(square_box, torch.ones(3, H, W), m, 0, cfg, steps=20)
    g, b = auc(good), auc(-good)
    assert g["deletion"] < 0.2 < 0.8 < b["deletion"]
    assert g["insertion"] > 0.8 > 0.2 > b["insertion"]


def test_plot_rise_panels_and_grid_write_png_and_svg_with_provenance(tmp_path):
    rng = np.random.default_rng(0)
    sal = rng.random((40, 60))
    sal[:, :8] = np.nan
    mask = np.zeros((40, 60), bool)
    mask[10:25, 20:40] = True
    two_maps = [{"saliency": sal, "title": "class"}, {"saliency": rng.random((40, 60))}]
    rows = [{"image": rng.integers(0, 255, (40, 60), dtype=np.uint8), "maps": two_maps,
             "mask": mask, "text_boxes": [(40, 2, 58, 9)], "caption": "benign (1) · r = 0.93"},
            {"image": rng.integers(0, 255, (40, 60, 3), dtype=np.uint8),
             "maps": [{"saliency": rng.random((40, 60))}], "caption": "malignant (2)"}]
    png, svg = plot_rise_panels(rows, tmp_path / "rise.lite0", "RISE on BUSI",
                                metadata={"stage": "rise", "n_masks": 1000})
    assert png.name == "rise.lite0.png" and png.exists() and svg.exists()
    with Image.open(png) as im:
        assert json.loads(im.info["Description"]) == {"stage": "rise", "n_masks": 1000}
    png, svg = plot_rise_grid({"benign": rows[:1], "malignant": rows[1:], "normal": []},
                              tmp_path / "grid", "RISE grid", metadata={"n": 2})
    assert png.exists() and svg.exists()
    with pytest.raises(VlmprobeError, match="original-image coordinates"):
        plot_rise_panels([{**rows[1], "maps": [{"saliency": np.zeros((5, 5))}]}], tmp_path / "x",
                         "bad")


@pytest.mark.parametrize("field, value", [("n_masks", 1), ("n_masks", 10.0), ("s", 1),
                                          ("p", 0.0), ("p", 1.0), ("fill", "white"),
                                          ("blur_sigma", 0.0), ("blur_sigma", "10"),
                                          ("score", "proba"), ("seed", -1), ("batch_size", 0),
                                          ("batch_size", True)])
def test_bad_config_names_the_parameter(field, value):
    with pytest.raises(VlmprobeError, match=f"'{field}' parameter of RiseConfig"):
        RiseConfig(**{field: value}).check()
    with pytest.raises(VlmprobeError, match=f"'{field}'"):
        rise_saliency(square_box, torch.ones(3, H, W), RiseConfig(**{field: value}))
