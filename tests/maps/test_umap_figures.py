"""UMAP figures and HTML: large-N rules, thumbnails, interactive file, models side by side."""
import json
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from PIL import Image

from vlmprobe.cache import Cache
from matplotlib.figure import Figure

from vlmprobe.maps.figures import (RASTER_ABOVE, plot_compare, plot_map, point_style, read_thumbnails, scatter, stratified_choice)
from vlmprobe.maps.html import MAX_IMAGES, hover_images, probe_predictions, write_html
from vlmprobe.maps import UmapConfig, run_umap
from vlmprobe.validation import VlmprobeError

from test_umap import clustered


def npz_cache(tmp_path, X, labels, model="toy", dataset="toyset", with_images=True) -> Cache:
    """A MedMNIST-shaped cache: every sample is a slot of one npz under the dataset root."""
    n, root = len(X), tmp_path / "data"
    if with_images:
        root.mkdir(exist_ok=True)
        shades = np.linspace(0, 255, n).astype(np.uint8)
        images = np.broadcast_to(shades[:, None, None, None], (n, 12, 12, 3)).copy()
        np.savez(root / "toy.npz", train_images=images)
    return Cache(embeddings=X, labels=labels, relpaths=[f"toy.npz#train_images/{i}" for i in range(n)],
                 class_names=["a", "b", "c"], model=model, dataset=dataset,
                 dataset_fingerprint="f", cache_key=f"k-{model}",
                 metadata={"site": [f"s{i % 2}" for i in range(n)]},
                 attrs={"dataset_root": str(root)}, path=tmp_path / dataset / f"{model}.h5")


def big(tmp_path, n=30_000, with_images=False):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    coords = (rng.normal(size=(n, 2)) + labels[:, None] * 4).astype(np.float32)
    return npz_cache(tmp_path, np.zeros((n, 2), np.float32), labels,
                     with_images=with_images), coords


def test_point_style_falls_with_n_and_is_applied():
    sizes, alphas = zip(*(point_style(n) for n in (100, 1000, 10_000, 30_000)))
    assert list(sizes) == sorted(sizes, reverse=True) and sizes[0] > 4 * sizes[-1]
    assert list(alphas) == sorted(alphas, reverse=True) and alphas[-1] < 0.5
    for n in (300, 30_000):
        ax = Figure().subplots()
        coords = np.random.default_rng(0).normal(size=(n, 2))
        scatter(ax, coords, ["a", "b", "c"] * (n // 3), "t")
        points = ax.collections[0]
        assert points.get_sizes()[0] == pytest.approx(point_style(n)[0])
        assert points.get_alpha() == pytest.approx(point_style(n)[1])
        assert points.get_rasterized() == (n > RASTER_ABOVE)


def test_30k_point_svg_stays_small(tmp_path):
    cache, coords = big(tmp_path)
    png, svg = plot_map(cache, coords, UmapConfig(), tmp_path / "big")
    assert svg.stat().st_size < 1_500_000, f"{svg.stat().st_size / 1e6:.1f} MB"
    assert svg.read_text().count("<path") < 200  # the points are one image, not 30k paths


def test_stratified_choice_takes_classes_in_turn():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 2)
    picked = stratified_choice(labels, 7, seed=0)
    assert np.bincount(labels[picked]).tolist() == [3, 2, 2]
    assert picked.tolist() == stratified_choice(labels, 7, seed=0).tolist()
    assert picked.tolist() != stratified_choice(labels, 7, seed=1).tolist()
    assert len(stratified_choice(labels, 100, seed=0)) == len(labels)


def test_thumbnails_drawn_beside_their_points(tmp_path):
    X, y = clustered(n_per=20)
    cache = npz_cache(tmp_path, X, y)
    images = read_thumbnails(cache, stratified_choice(y, 6, 0))
    assert len(images) == 6 and all(max(im.size) <= 96 for im in images.values())
    shade = np.asarray(images[int(next(iter(images)))])[0, 0, 0]
    assert shade == np.linspace(0, 255, 60).astype(np.uint8)[next(iter(images))]  # the right slot
    png, _ = plot_map(cache, X[:, :2], UmapConfig(), tmp_path / "thumbs", images=images)
    meta = json.loads(Image.open(png).info["Description"])
    assert sorted(meta["thumbnails"]) == sorted(cache.relpaths[i] for i in images)
    plain, _ = plot_map(cache, X[:, :2], UmapConfig(), tmp_path / "plain")
    assert Image.open(png).size[0] > Image.open(plain).size[0]  # the ring of images takes room


def test_missing_images_warn_with_the_path_and_the_figure_is_still_drawn(tmp_path):
    X, y = clustered(n_per=20)
    cache = npz_cache(tmp_path, X, y, with_images=False)
    with pytest.warns(UserWarning, match=r"6 of 6 images .* under data.toyset \(the cache was "
                      r"extracted from .*data, which is not there\).*Pass --root"):
        images = read_thumbnails(cache, stratified_choice(y, 6, 0))
    assert images == {}
    png, svg = plot_map(cache, X[:, :2], UmapConfig(), tmp_path / "no-thumbs", images=images)
    assert png.is_file() and svg.is_file()


def _payload(html: str) -> dict:
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                html, re.S).group(1))


def test_html_is_self_contained_with_at_most_2000_images(tmp_path):
    n = 2500
    cache, coords = big(tmp_path, n, with_images=True)
    hover = hover_images(cache, seed=0)
    cache.class_names = ["a", "</script><script>alert(1)</script>", "c"]
    path = write_html(cache, coords, UmapConfig(), tmp_path / "map", hover)
    html = path.read_text()
    assert not re.search(r"https?://", html) and "<link" not in html
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert html.count("</script>") == 2  # a class name cannot close the data block
    data = _payload(html)
    assert len(data["x"]) == len(data["path"]) == n and data["path"][7] == cache.relpaths[7]
    assert len(data["images"]) == MAX_IMAGES == sum(t >= 0 for t in data["thumb"])
    by_class = data["colourings"][0]
    assert by_class["name"] == "class"
    assert by_class["names"][by_class["index"][0]] == cache.class_names[cache.labels[0]]
    assert "pred" not in data  # no saved probe: no prediction field
    assert path.stat().st_size < 8_000_000


def test_html_shows_the_probe_predictions_of_test_images(tmp_path):
    X, y = clustered(n_per=10)
    cache = npz_cache(tmp_path, X, y)
    assert probe_predictions(cache) is None
    probe_dir = tmp_path / "toyset" / "probe"  # where `vlmprobe probe` writes, beside the cache
    probe_dir.mkdir(parents=True)
    (probe_dir / "toy.test_predictions.csv").write_text(
        f"relpath,true,refit_pred\n{cache.relpaths[3]},a,b\n")
    preds = probe_predictions(cache)
    assert preds == {cache.relpaths[3]: "b"}
    data = _payload(write_html(cache, X[:, :2], UmapConfig(), tmp_path / "m",
                               hover_images(cache, 0), preds).read_text())
    assert data["pred"][3] == "b" and data["pred"][4] is None
    assert len(data["images"]) == len(X)


def test_models_side_by_side_and_other_datasets_apart(tmp_path, caplog):
    X, y = clustered(n_per=20)
    a = npz_cache(tmp_path, X, y, model="m1")
    b = npz_cache(tmp_path, X[:, ::-1].copy(), y, model="m2")
    other = npz_cache(tmp_path, X, y, model="m1", dataset="other")
    caplog.set_level("INFO", logger="vlmprobe")
    pngs = run_umap([a, b, other], UmapConfig(n_neighbors=5), color_by=["site"],
                    thumbnails=3).figures
    folder = tmp_path / "toyset" / "umap"
    compare = [p for p in pngs if p.name.startswith("compare.")]
    assert [p.name for p in compare] == ["compare.cosine-nn5-md0.1-seed0.png",
                                         "compare.cosine-nn5-md0.1-seed0.by-site.png"]
    assert all(p.parent == folder and p.with_suffix(".svg").is_file() for p in compare)
    meta = json.loads(Image.open(compare[0]).info["Description"])
    assert meta["models"] == ["m1", "m2"] and len(meta["metrics"]) == 2
    assert not list((tmp_path / "other" / "umap").glob("compare.*"))
    assert "only within a dataset" in caplog.text
    for model in ("m1", "m2"):
        data = _payload((folder / f"{model}.cosine-nn5-md0.1-seed0.html").read_text())
        assert data["columns"]["site"] == a.metadata["site"]  # --color-by values on hover
    with pytest.raises(VlmprobeError, match="--thumbnails -1"):
        run_umap([a], UmapConfig(n_neighbors=5), thumbnails=-1)
    with pytest.raises(VlmprobeError, match="no metadata column 'plane'"):
        run_umap([a], UmapConfig(n_neighbors=5), color_by=["plane"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the images are there: no warning
        run_umap([a], UmapConfig(n_neighbors=5), thumbnails=3)


NODE_HARNESS = """
let arcs = 0;
const listeners = {}, fakeCtx = {setTransform() {}, clearRect() {}, beginPath() {},
                                 arc() { arcs++; }, fill() {}};
const el = () => ({style: {}, classList: {toggle() {}}, append() {}, replaceChildren() {},
                   addEventListener(t, f) { listeners[t] = f; },
                   getBoundingClientRect: () => ({left: 0, top: 0}),
                   clientWidth: 800, clientHeight: 600});
const els = {data: {textContent: DATA}, map: Object.assign(el(), {getContext: () => fakeCtx}),
             tip: el(), legend: el(), colour: el()};
global.document = {getElementById: id => els[id], createElement: el};
global.window = {devicePixelRatio: 1, innerWidth: 1000, innerHeight: 800, addEventListener() {}};
SCRIPT
const drawn = arcs, i = D.order[0];
listeners.mousemove({clientX: sx(i), clientY: sy(i)});
const shown = els.tip.style.display;
listeners.wheel({deltaY: -100, clientX: 400, clientY: 300, preventDefault() {}});
const zoomed = arcs;
els.colour.value = "1"; listeners.change();  // recoloured by the first metadata column
console.log(JSON.stringify({drawn, shown, after: zoomed, by: C.name, redrawn: arcs - zoomed}));
"""


@pytest.mark.skipif(not shutil.which("node"), reason="needs node to run the page's JavaScript")
def test_html_javascript_draws_every_point_and_shows_the_tip(tmp_path):
    X, y = clustered(n_per=10)
    cache = npz_cache(tmp_path, X, y)
    html = write_html(cache, X[:, :2], UmapConfig(), tmp_path / "m",
                      hover_images(cache, 0)).read_text()
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    script = re.findall(r"<script>(.*?)</script>", html, re.S)[0]
    harness = NODE_HARNESS.replace("DATA", json.dumps(data.group(1))).replace("SCRIPT", script)
    (tmp_path / "page.js").write_text(harness)
    res = subprocess.run(["node", str(tmp_path / "page.js")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # every point, redrawn on zoom, and again when recoloured by the site
    assert out == {"drawn": 30, "shown": "block", "after": 60, "by": "site", "redrawn": 30}


def test_html_recolours_by_any_metadata_column_but_ids_and_paths(tmp_path):
    X, y = clustered(n_per=10)
    cache = npz_cache(tmp_path, X, y)
    n = len(X)
    cache.metadata.update({"age": [str(20 + 2 * i) if i % 7 else "" for i in range(n)],
                           "mask_path": [f"masks/{i}.png" for i in range(n)]})
    data = _payload(write_html(cache, X[:, :2], UmapConfig(), tmp_path / "m", {}).read_text())
    by = {c["name"]: c for c in data["colourings"]}
    assert list(by) == ["class", "age", "site"] and data["skipped"] == ["mask_path"]
    site = by["site"]
    assert [site["names"][v] for v in site["index"]] == cache.metadata["site"]
    age = by["age"]  # 26 values: 8 equal-width bins of 20..78, missing ones apart
    assert age["kind"] == "numeric" and len(age["names"]) == 9 and age["names"][-1] == "(missing)"
    assert [age["index"][i] for i in (1, 7, n - 1)] == [0, 8, 7]
    assert age["names"][0].startswith("22 – ") and age["names"][7].endswith(" – 78")


def test_cli_passes_fast_thumbnails_and_root(tmp_path):
    from typer.testing import CliRunner

    from vlmprobe.cache import write_cache
    from vlmprobe.cli import app

    X, y = clustered(n_per=20)
    cache = npz_cache(tmp_path, X, y)
    path = write_cache(tmp_path / "caches" / "toy.h5", cache)
    moved = tmp_path / "data"  # the recorded root is gone; --root points at the images
    moved = moved.rename(tmp_path / "moved")
    res = CliRunner().invoke(app, ["umap", str(path), "--n-neighbors", "5", "--min-dist", "0.1",
                                   "--fast", "--thumbnails", "3", "--root", str(moved),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    png = tmp_path / "out" / "toyset" / "umap" / "toy.cosine-nn5-md0.1-fast.png"
    meta = json.loads(Image.open(png).info["Description"])
    assert meta["umap"]["fast"] and len(meta["thumbnails"]) == 3
    assert "unseeded" in _payload(png.with_suffix(".html").read_text())["title"]


def test_many_models_wrap_into_rows(tmp_path):
    X, y = clustered(n_per=10)
    caches = [npz_cache(tmp_path, X, y, model=f"m{i}") for i in range(6)]
    maps = [X[:, :2] + i for i in range(6)]
    scores = [{"trustworthiness": 0.9, "knn_preservation": 0.5, "silhouette_2d": 0.1 * i,
               "knn_acc_2d": 0.8} for i in range(6)]
    png, _ = plot_compare(caches, maps, scores, UmapConfig(), tmp_path / "cmp")
    width, height = Image.open(png).size
    assert height > 0.35 * width  # 2 rows of 4 (2 empty); 1 row of 6 would be 0.17
    svg = png.with_suffix(".svg").read_text()
    assert all(f">m{i}<" in svg and f"silhouette {0.1 * i:.2f}" in svg for i in range(6))


def test_thumbnails_of_image_files(tmp_path):
    X, y = clustered(n_per=1)
    root = tmp_path / "images"
    root.mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for i, c in enumerate(colours):
        Image.new("RGB", (640, 480), c).save(root / f"{i}.{'jpg' if i else 'png'}")
    cache = npz_cache(tmp_path, X, y, with_images=False)
    cache.relpaths = ["0.png", "1.jpg", "2.jpg"]
    images = read_thumbnails(cache, [0, 1, 2], root=root, px=64)
    assert [im.size for im in images.values()] == [(64, 48)] * 3
    for i, c in enumerate(colours):
        assert np.abs(np.asarray(images[i])[24, 32].astype(int) - c).max() < 8
