"""Interactive UMAP map: one self-contained HTML file per map, opened offline (no CDN, no server).

Points are drawn on a canvas by the few lines of JavaScript inlined below (no plotting library: a
dependency would either be inlined, megabytes per file, or fetched from a CDN, which does not open
offline). Hovering a point shows its image, relative path, label, the --color-by columns' values
and, when ``vlmprobe probe`` saved per-image test predictions for the cache, the probe's
prediction. Wheel zooms, drag pans, double-click resets, a legend entry hides its points.

The map can be recoloured by the class or any metadata column (:func:`colourings`): a column of
at most ``MAX_VALUES`` values by value, a numeric one with more in ``NUMERIC_BINS`` equal-width
bins; a column with a value per image or nearly (ids, paths) is not offered, and the page says so.

At most ``MAX_IMAGES`` (2,000) thumbnails, chosen with the seed, are embedded as small base64
JPEGs (≈ 2 kB each), so a 30k-point map stays a few MB; other points hover without an image.
"""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_hex

from ..cache import Cache
from ..cache.chunks import write_atomic
from ..probe import probe_path
from .config import seed_text
from .figures import palette, point_style, read_thumbnails, values

MAX_IMAGES = 2000
IMAGE_PX = 64
MAX_VALUES = 20  # distinct values a column is coloured by one by one (the figures' legend limit)
NUMERIC_BINS = 8
MISSING_COLOUR = "#bbbbbb"


def probe_predictions(cache: Cache, out: Path | None = None) -> dict[str, str] | None:
    """relpath → the class probe's refit prediction on its test images, or None without a probe."""
    stem = probe_path(cache, "class", out)
    path = stem.with_name(stem.name + ".test_predictions.csv")
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return {row["relpath"]: row["refit_pred"] for row in csv.DictReader(f)}


def _jpeg(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=70)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def hover_images(cache: Cache, seed: int, root: Path | None = None,
                 max_images: int = MAX_IMAGES) -> dict[int, str]:
    """Base64 JPEGs of ``max_images`` seeded-sampled points, read once for every map of a cache."""
    n = len(cache.relpaths)
    chosen = np.sort(np.random.default_rng(seed).choice(n, min(n, max_images), replace=False))
    return {i: _jpeg(im) for i, im in read_thumbnails(cache, chosen, root, IMAGE_PX).items()}


def _numeric(values: list[str]) -> np.ndarray | None:
    """The values as floats (NaN where empty), or None if any is not a number."""
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return None


def _binned(name: str, values: list[str]) -> dict | None:
    """A numeric column in equal-width bins (viridis, missing values grey), or None."""
    x = _numeric(values)
    if x is None or np.isnan(x).all():
        return None
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    edges = np.linspace(lo, hi, NUMERIC_BINS + 1)
    cmap = matplotlib.colormaps["viridis"]
    names = [f"{a:.4g} – {b:.4g}" for a, b in zip(edges[:-1], edges[1:])]
    colours = [to_hex(cmap(k / max(1, NUMERIC_BINS - 1))) for k in range(NUMERIC_BINS)]
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, NUMERIC_BINS - 1)
    missing = np.isnan(x)
    if missing.any():
        names.append("(missing)")
        colours.append(MISSING_COLOUR)
        index[missing] = NUMERIC_BINS
    return {"name": name, "kind": "numeric", "names": names, "colours": colours,
            "index": index.tolist()}


def colourings(cache: Cache) -> tuple[list[dict], list[str]]:
    """What the map can be coloured by: the class, then each metadata column (by value, or in
    bins where numeric with many values), each as legend names, colours and a legend index per
    point; and the columns left out (a value per image or nearly: ids, paths)."""
    out, skipped = [], []
    for column in [None, *sorted(cache.metadata)]:
        vals = values(cache, column)
        names = sorted(set(vals))
        if column is None or len(names) <= MAX_VALUES:
            colours = palette(names)
            index = {v: k for k, v in enumerate(names)}
            out.append({"name": column or "class", "kind": "values", "names": names,
                        "colours": [to_hex(colours[v]) for v in names],
                        "index": [index[v] for v in vals]})
        elif (binned := _binned(column, cache.metadata[column])) is not None:
            out.append(binned)
        else:
            skipped.append(column)
    return out, skipped


def write_html(cache: Cache, coords: np.ndarray, cfg, path: Path, images: dict[int, str],
               predictions: dict[str, str] | None = None, columns: list[str] = ()) -> Path:
    """``<path>.html``: the map with hover details, recoloured by any column
    (:func:`colourings`); ``images`` from :func:`hover_images`, ``predictions`` from
    :func:`probe_predictions` (None: no prediction field), ``columns`` metadata columns also
    shown on hover (the --color-by ones)."""
    n = len(coords)
    thumb = np.full(n, -1)
    thumb[sorted(images)] = np.arange(len(images))
    size, alpha = point_style(n)
    colour_by, skipped = colourings(cache)
    data = {
        "title": f"{cache.model}{' (null baseline)' if cache.baseline else ''} on {cache.dataset} "
                 f"(N={n}), UMAP metric={cfg.metric}, n_neighbors={cfg.n_neighbors}, "
                 f"min_dist={cfg.min_dist:g}, {seed_text(cfg)}",
        "colourings": colour_by, "skipped": skipped,
        "x": np.round(coords[:, 0].astype(float), 4).tolist(),
        "y": np.round(coords[:, 1].astype(float), 4).tolist(),
        "path": list(cache.relpaths),
        "thumb": thumb.tolist(), "images": [images[i] for i in sorted(images)],
        "order": np.random.default_rng(cfg.seed).permutation(n).tolist(),
        "radius": max(1.0, float(np.sqrt(size))), "alpha": alpha,
        "columns": {col: values(cache, col) for col in columns},
    }
    if predictions is not None:
        data["pred"] = [predictions.get(r) for r in cache.relpaths]
    # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>" can end it
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    html = _TEMPLATE.replace("__TITLE__", _escape(data["title"])).replace("__DATA__", payload)
    out = path.with_name(path.name + ".html")
    write_atomic(out, html)
    return out


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{margin:0;font:13px system-ui,sans-serif;display:flex;flex-direction:column;height:100vh}
header{padding:6px 10px;border-bottom:1px solid #ddd}
main{flex:1;display:flex;min-height:0}
canvas{flex:1;min-width:0;cursor:crosshair}
#legend{width:220px;overflow:auto;padding:6px;border-left:1px solid #ddd}
#legend div{cursor:pointer;padding:1px 0}#legend .off{opacity:.3}
#legend span{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:5px}
#legend p{color:#666;margin:8px 0 0}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:4px;
display:none;max-width:260px;word-break:break-all;box-shadow:0 1px 4px #0004}
#tip img{display:block;width:96px;image-rendering:auto;margin-bottom:3px}
</style></head><body>
<header>__TITLE__ &middot; colour by <select id="colour"></select> &middot; wheel: zoom, drag: pan,
double-click: reset, legend: hide its points</header>
<main><canvas id="map"></canvas><div id="legend"></div></main><div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const cv = document.getElementById("map"), ctx = cv.getContext("2d");
const tip = document.getElementById("tip"), n = D.x.length, hidden = new Set();
const select = document.getElementById("colour"), legend = document.getElementById("legend");
let W = 0, H = 0, view = null, drag = null, C = D.colourings[0];
function home() {
  const lo = a => a.reduce((m, v) => Math.min(m, v)), hi = a => a.reduce((m, v) => Math.max(m, v));
  const x0 = lo(D.x), x1 = hi(D.x), y0 = lo(D.y), y1 = hi(D.y);
  view = {cx: (x0 + x1) / 2, cy: (y0 + y1) / 2,
          s: 0.92 * Math.min(W / Math.max(x1 - x0, 1e-9), H / Math.max(y1 - y0, 1e-9))};
}
const sx = i => (D.x[i] - view.cx) * view.s + W / 2, sy = i => H / 2 - (D.y[i] - view.cy) * view.s;
function resize() {
  const r = window.devicePixelRatio || 1;
  W = cv.clientWidth; H = cv.clientHeight; cv.width = W * r; cv.height = H * r;
  ctx.setTransform(r, 0, 0, r, 0, 0); if (!view) home(); draw();
}
function draw() {
  ctx.clearRect(0, 0, W, H); ctx.globalAlpha = D.alpha;
  for (const i of D.order) {
    if (hidden.has(C.index[i])) continue;
    ctx.fillStyle = C.colours[C.index[i]];
    ctx.beginPath(); ctx.arc(sx(i), sy(i), D.radius, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.globalAlpha = 1;
}
function nearest(px, py) {
  let best = -1, bd = 100;  // within 10 px
  for (let i = 0; i < n; i++) {
    if (hidden.has(C.index[i])) continue;
    const d = (sx(i) - px) ** 2 + (sy(i) - py) ** 2;
    if (d < bd) { bd = d; best = i; }
  }
  return best;
}
function line(text) { const p = document.createElement("div"); p.textContent = text; return p; }
function show(i, ev) {
  tip.replaceChildren();
  if (D.thumb[i] >= 0) {
    const img = document.createElement("img");
    img.src = "data:image/jpeg;base64," + D.images[D.thumb[i]]; tip.append(img);
  }
  const cls = D.colourings[0];
  tip.append(line(D.path[i]), line("label: " + cls.names[cls.index[i]]));
  if (C !== cls) tip.append(line(C.name + ": " + C.names[C.index[i]]));
  for (const [col, v] of Object.entries(D.columns)) {
    if (col !== C.name) tip.append(line(col + ": " + v[i]));
  }
  if (D.pred) tip.append(line(D.pred[i] === null ? "probe: not a test image"
                                                 : "probe prediction: " + D.pred[i]));
  tip.style.display = "block";
  tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 280) + "px";
  tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - 200) + "px";
}
cv.addEventListener("mousemove", ev => {
  const b = cv.getBoundingClientRect(), px = ev.clientX - b.left, py = ev.clientY - b.top;
  if (drag) {
    view.cx -= (px - drag[0]) / view.s; view.cy += (py - drag[1]) / view.s;
    drag = [px, py]; draw(); return;
  }
  const i = nearest(px, py);
  if (i < 0) tip.style.display = "none"; else show(i, ev);
});
cv.addEventListener("mousedown", ev => {
  const b = cv.getBoundingClientRect(); drag = [ev.clientX - b.left, ev.clientY - b.top];
});
window.addEventListener("mouseup", () => { drag = null; });
cv.addEventListener("mouseleave", () => { tip.style.display = "none"; });
cv.addEventListener("dblclick", () => { home(); draw(); });
cv.addEventListener("wheel", ev => {
  ev.preventDefault();
  const b = cv.getBoundingClientRect(), px = ev.clientX - b.left, py = ev.clientY - b.top;
  const mx = view.cx + (px - W / 2) / view.s, my = view.cy - (py - H / 2) / view.s;
  view.s *= Math.exp(-ev.deltaY * 0.0015);
  view.cx = mx - (px - W / 2) / view.s; view.cy = my + (py - H / 2) / view.s; draw();
}, {passive: false});
function colourBy(k) {
  C = D.colourings[k]; hidden.clear(); legend.replaceChildren();
  const counts = C.names.map(() => 0); C.index.forEach(v => counts[v]++);
  C.names.forEach((name, v) => {
    const row = document.createElement("div"), dot = document.createElement("span");
    dot.style.background = C.colours[v];
    row.append(dot, (name || "(none)") + " (n=" + counts[v] + ")");
    row.onclick = () => { hidden.has(v) ? hidden.delete(v) : hidden.add(v);
                          row.classList.toggle("off"); draw(); };
    legend.append(row);
  });
  if (D.skipped.length) {
    legend.append(Object.assign(document.createElement("p"), {textContent:
      "not offered (a value per image or nearly): " + D.skipped.join(", ")}));
  }
  if (view) draw();
}
D.colourings.forEach((c, k) => {
  const o = document.createElement("option"); o.value = k;
  o.textContent = c.name + (c.kind === "numeric" ? " (binned)" : ""); select.append(o);
});
select.addEventListener("change", () => colourBy(+select.value));
colourBy(0);
window.addEventListener("resize", resize); resize();
</script></body></html>
"""
