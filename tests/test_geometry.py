import numpy as np

from vlmprobe.geometry import input_geometry
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
