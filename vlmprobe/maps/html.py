"""Interactive UMAP map: one self-contained HTML file per map, opened offline (no CDN, no server).

Points are drawn on a canvas by the few lines of JavaScript inlined below (no plotting library: a
dependency would either be inlined, megabytes per file, or fetched from a CDN, which does not open
offline). Hovering a point shows its image, relative path, label, the --color-by columns' values
and, when ``vlmprobe probe`` saved per-image test predictions for the cache, the probe's
prediction. Wheel zooms, drag pans, double-click resets, a legend entry hides its class.

At most ``MAX_IMAGES`` (2,000) thumbnails, chosen with the seed, are embedded as small base64
JPEGs (≈ 2 kB each), so a 30k-point map stays a few MB; other points hover without an image.
"""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.colors import to_hex

from ..cache import Cache
from ..cache.chunks import write_atomic
from ..probe import probe_path
from .config import seed_text
from .figures import palette, point_style, read_thumbnails, values

MAX_IMAGES = 2000
IMAGE_PX = 64


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


def write_html(cache: Cache, coords: np.ndarray, cfg, path: Path, images: dict[int, str],
               predictions: dict[str, str] | None = None, columns: list[str] = ()) -> Path:
    """``<path>.html``: the map with hover details; ``images`` from :func:`hover_images`,
    ``predictions`` from :func:`probe_predictions` (None: no prediction field), ``columns``
    metadata columns also shown on hover (the --color-by ones)."""
    n = len(coords)
    vals = values(cache, None)
    names = sorted(set(vals))
    colours = palette(names)
    thumb = np.full(n, -1)
    thumb[sorted(images)] = np.arange(len(images))
    size, alpha = point_style(n)
    data = {
        "title": f"{cache.model}{' (null baseline)' if cache.baseline else ''} on {cache.dataset} "
                 f"(N={n}), UMAP metric={cfg.metric}, n_neighbors={cfg.n_neighbors}, "
                 f"min_dist={cfg.min_dist:g}, {seed_text(cfg)}",
        "names": names, "colours": [to_hex(colours[c]) for c in names],
        "x": np.round(coords[:, 0].astype(float), 4).tolist(),
        "y": np.round(coords[:, 1].astype(float), 4).tolist(),
        "label": [names.index(v) for v in vals], "path": list(cache.relpaths),
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
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:4px;
display:none;max-width:260px;word-break:break-all;box-shadow:0 1px 4px #0004}
#tip img{display:block;width:96px;image-rendering:auto;margin-bottom:3px}
</style></head><body>
<header>__TITLE__ &middot; wheel: zoom, drag: pan, double-click: reset, legend: hide a class</header>
<main><canvas id="map"></canvas><div id="legend"></div></main><div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const cv = document.getElementById("map"), ctx = cv.getContext("2d");
const tip = document.getElementById("tip"), n = D.x.length, hidden = new Set();
let W = 0, H = 0, view = null, drag = null;
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
    if (hidden.has(D.label[i])) continue;
    ctx.fillStyle = D.colours[D.label[i]];
    ctx.beginPath(); ctx.arc(sx(i), sy(i), D.radius, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.globalAlpha = 1;
}
function nearest(px, py) {
  let best = -1, bd = 100;  // within 10 px
  for (let i = 0; i < n; i++) {
    if (hidden.has(D.label[i])) continue;
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
  tip.append(line(D.path[i]), line("label: " + D.names[D.label[i]]));
  for (const [col, v] of Object.entries(D.columns)) tip.append(line(col + ": " + v[i]));
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
const counts = D.names.map(() => 0); D.label.forEach(l => counts[l]++);
D.names.forEach((name, c) => {
  const row = document.createElement("div"), dot = document.createElement("span");
  dot.style.background = D.colours[c];
  row.append(dot, (name || "(none)") + " (n=" + counts[c] + ")");
  row.onclick = () => { hidden.has(c) ? hidden.delete(c) : hidden.add(c);
                        row.classList.toggle("off"); draw(); };
  document.getElementById("legend").append(row);
});
window.addEventListener("resize", resize); resize();
</script></body></html>
"""
