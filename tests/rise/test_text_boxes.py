import csv

import numpy as np
import pytest
from PIL import Image

from vlmprobe.rise import boxes_mask, detect_text_boxes, read_box_file
from vlmprobe.rise.text_boxes import box_iou
from vlmprobe.validation import VlmprobeError


@pytest.fixture
def phantom(shared_phantom):
    return shared_phantom


def test_detector_finds_every_phantom_word_and_little_else(phantom):
    rows = list(csv.DictReader(open(phantom / "manifest.csv")))
    ious, spurious = [], 0
    for row in rows:
        found = detect_text_boxes(Image.open(phantom / row["path"]))
        if row["text_x0"]:
            truth = tuple(int(row[f"text_{k}"]) for k in ("x0", "y0", "x1", "y1"))
            ious.append(max((box_iou(truth, b) for b in found), default=0.0))
            spurious += sum(box_iou(truth, b) == 0 for b in found)
        else:
            spurious += len(found)
    assert len(ious) >= 30
    print(f"detector IoU on {len(ious)} words: min {min(ious):.2f}, mean {np.mean(ious):.2f}; "
          f"{spurious} spurious boxes in {len(rows)} images")
    assert min(ious) >= 0.5 and np.mean(ious) >= 0.85
    assert spurious <= len(rows) // 10


def test_detector_ignores_images_without_overlays():
    rng = np.random.default_rng(0)
    speckle = (rng.rayleigh(60, (200, 300))).clip(0, 255).astype(np.uint8)
    assert detect_text_boxes(speckle) == []
    drawn = speckle.copy()
    for x in range(40, 160, 6):    # bars 3 px wide of one flat colour, like a caption
        drawn[50:62, x:x + 3] = 240
    boxes = detect_text_boxes(np.stack([drawn] * 3, -1))
    assert len(boxes) == 1 and box_iou(boxes[0], (40, 50, 157, 62)) >= 0.5


def test_box_file_and_mask(tmp_path):
    f = tmp_path / "boxes.csv"
    f.write_text("relpath,x0,y0,x1,y1\na.png,1,2,4,3\na.png,0,0,1,1\nb.png,2,2,3,5\n")
    boxes = read_box_file(f)
    assert boxes == {"a.png": [(1, 2, 4, 3), (0, 0, 1, 1)], "b.png": [(2, 2, 3, 5)]}
    m = boxes_mask(boxes["a.png"], (5, 4))
    assert m.shape == (4, 5) and m.sum() == 3 + 1 and m[2, 1:4].all() and m[0, 0]
    f.write_text("path,x0\na.png,1\n")
    with pytest.raises(VlmprobeError, match="boxes.csv must be a CSV with the header"):
        read_box_file(f)
    f.write_text("relpath,x0,y0,x1,y1\na.png,1,2,one,3\n")
    with pytest.raises(VlmprobeError, match="line 2"):
        read_box_file(f)
    f.write_text("relpath,x0,y0,x1,y1\na.png,4,2,1,3\n")
    with pytest.raises(VlmprobeError, match="empty"):
        read_box_file(f)
    with pytest.raises(VlmprobeError, match="does not exist"):
        read_box_file(tmp_path / "missing.csv")
