import numpy as np

from vlmprobe.encoders.geometry import input_geometry
from vlmprobe.registry import PreprocessCfg


def test_shortest_centre_crop_geometry_and_unseen_fraction():
    cfg = PreprocessCfg(image_size=224, resize="shortest", resize_size=256)
    g = input_geometry(cfg, 400, 200)  # resized to 512x256, crop 224 keeps x in [144, 368)
    assert g.scale == (512 / 400, 256 / 200)
    x_in, _ = g.to_input(np.array([0.0, 399.0]), np.array([0.0]))
    assert x_in[0] < 0 and x_in[1] > 224
    seen = g.seen_mask()
    kept_cols = seen.any(0).sum()
    assert abs(kept_cols - 224 / 512 * 400) <= 2
    assert abs(g.unseen_fraction - (1 - (224 / 512) * (224 / 256))) < 0.02


def test_to_original_carries_a_blob_back_and_marks_unseen_nan():
    cfg = PreprocessCfg(image_size=64, resize="shortest", resize_size=64)
    g = input_geometry(cfg, 128, 64)  # crop keeps the middle half horizontally
    m = np.zeros((64, 64))
    m[10:20, 30:40] = 1.0
    back = g.to_original(m)
    assert back.shape == (64, 128)
    assert np.isnan(back[:, :30]).all() and np.isnan(back[:, -30:]).all()
    ys, xs = np.nonzero(np.nan_to_num(back) > 0.5)
    assert 10 <= ys.mean() <= 20 and 32 + 30 <= xs.mean() <= 32 + 40


def test_squash_and_pad_square():
    sq = input_geometry(PreprocessCfg(image_size=100, resize="squash"), 200, 50)
    assert sq.scale == (0.5, 2.0) and sq.unseen_fraction == 0
    pad = input_geometry(PreprocessCfg(image_size=100, resize="pad_square"), 200, 100)
    x, y = pad.to_input(np.array([0.0]), np.array([0.0]))
    assert abs(y[0] - 25.0) < 1 and abs(x[0]) < 1  # 50 px of padding above, scaled by 1/2


def test_longest_pad_maps_onto_the_top_left_of_the_canvas_and_back():
    """FLAIR's canvas: 451 x 300 -> longer side 512 (300 * 512 / 451 = 340.6, truncated to
    340) at the top-left of 512 x 512; every original pixel is seen, the rest is padding."""
    g = input_geometry(PreprocessCfg(image_size=512, resize="longest_pad"), 451, 300)
    assert g.input_size == (512, 512) and g.shift == (0.0, 0.0)
    assert g.scale == (512 / 451, 340 / 300)
    assert np.allclose(g.to_input(np.array([-0.5, 450.5]), np.array([-0.5, 299.5])),
                       ([-0.5, 511.5], [-0.5, 339.5]))
    assert g.unseen_fraction == 0.0
    m = np.zeros((512, 512))
    m[100:140, 200:260] = 1.0  # input rows 100-140 = original rows ~88-123 (x 300/340)
    m[400:, :] = 5.0  # padding below the image: never read back
    back = g.to_original(m)
    assert back.shape == (300, 451) and not np.isnan(back).any() and back.max() <= 1.0
    ys, xs = np.nonzero(back > 0.5)
    # the blob's centre (input 119.5, 229.5) carried back through the inverse map
    assert abs(ys.mean() - (120 * 300 / 340 - 0.5)) < 1
    assert abs(xs.mean() - (230 * 451 / 512 - 0.5)) < 1


def test_longest_pad_tall_image_pads_on_the_right():
    g = input_geometry(PreprocessCfg(image_size=100, resize="longest_pad"), 30, 200)
    assert g.scale == (15 / 30, 0.5)  # 30 * 100 / 200 = 15 columns, then 85 columns of zeros
    x, _ = g.to_input(np.array([29.5]), np.array([0.0]))
    assert abs(x[0] - 14.5) < 1e-9
