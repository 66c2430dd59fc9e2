"""Pictures for the HTML report without a plotting library: RGB arrays, PNG and SVG text.

Everything here works on display pixels and knows nothing of registration. Images are
``uint8`` arrays of shape (rows, columns, 3), row 0 at the top. Colour maps are 256-entry
lookup tables interpolated in code from a few anchor colours. PNGs are encoded by Pillow
(zlib level 1: fast, a little larger); plots are inline SVG polylines.

Example
-------
>>> import numpy as np
>>> rgb = colour(np.linspace(0, 1, 12).reshape(3, 4), 0.0, 1.0, GREY)
>>> enlarge(rgb, (6, 8)).shape
(6, 8, 3)
"""
from __future__ import annotations

import base64
import html
import io as _bytesio
import math

import numpy as np


def lookup_table(anchors) -> np.ndarray:
    """A (256, 3) uint8 colour map, piecewise linear through ``anchors`` [(position in [0, 1], (r, g, b))]."""
    pos = [p for p, _ in anchors]
    rgb = np.array([c for _, c in anchors], float)
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, pos, rgb[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


GREY = lookup_table([(0.0, (0, 0, 0)), (1.0, (255, 255, 255))])
# Blue - white - red (ColorBrewer RdBu's anchors, reversed): signed differences, Jacobian around 1.
DIVERGING = lookup_table([(0.0, (5, 48, 97)), (0.25, (67, 147, 195)), (0.5, (247, 247, 247)),
                          (0.75, (214, 96, 77)), (1.0, (103, 0, 31))])
# Black - purple - orange - pale yellow (magma-like): magnitudes and log densities.
SEQUENTIAL = lookup_table([(0.0, (0, 0, 4)), (0.25, (80, 18, 123)), (0.5, (182, 54, 121)),
                           (0.75, (251, 136, 97)), (1.0, (252, 253, 191))])
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # line colours, one per series


def colour(a, lo: float, hi: float, table: np.ndarray) -> np.ndarray:
    """RGB of ``a``: ``lo`` .. ``hi`` spread over ``table`` (values outside clipped to its ends, NaN to ``lo``)."""
    t = np.nan_to_num((np.asarray(a, float) - lo) * (255.0 / (hi - lo)) + 0.5, nan=0.0)  # + 0.5: nearest entry
    return table[np.clip(t, 0, 255).astype(np.uint8)]


def paint(rgb, mask, colour_rgb, opacity: float = 1.0) -> np.ndarray:
    """A copy of ``rgb`` with the True pixels of ``mask`` blended towards ``colour_rgb``."""
    out = rgb.copy()
    mix = (1 - opacity) * out[mask] + opacity * np.asarray(colour_rgb, float)
    out[mask] = mix.round().astype(np.uint8)
    return out


def display_shape(shape, aspect: float, min_size: int = 256) -> tuple:
    """(rows, columns) on screen for an image of ``shape`` whose pixels are ``aspect`` times taller than wide.

    Columns are enlarged by the smallest whole factor that makes the longer side at least ``min_size``;
    rows by the same factor times ``aspect`` (physical proportions)."""
    h, w = shape
    k = max(1, math.ceil(min_size / max(h * aspect, w)))
    return max(1, round(h * aspect * k)), w * k


def _index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(int), n_in - 1)


def enlarge(a, shape) -> np.ndarray:
    """Nearest-neighbour resampling of the first two axes of ``a`` to ``shape`` (whole factors repeat pixels)."""
    return a[_index(a.shape[0], shape[0])[:, None], _index(a.shape[1], shape[1])[None, :]]


def outline(mask) -> np.ndarray:
    """The border of a boolean 2D ``mask``: pixels with a 4-neighbour of the other kind (a 2-pixel line)."""
    m = np.asarray(mask, bool)
    edge = np.zeros_like(m)
    for axis in (0, 1):
        diff = np.diff(m, axis=axis)
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return edge


def draw_lines(rgb, lines, colour_rgb) -> np.ndarray:
    """A copy of ``rgb`` with polylines drawn one pixel wide.

    ``lines``: array of shape (lines, points, 2), (row, column) in pixel units, pixel centres at
    whole numbers; a line is cut where a coordinate is NaN. Each segment is sampled at steps of
    at most half a pixel, so the line has no gaps."""
    a, b = lines[:, :-1].reshape(-1, 2), lines[:, 1:].reshape(-1, 2)
    keep = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = a[keep], b[keep]
    out = rgb.copy()
    if not len(a):
        return out
    n = max(2, int(np.ceil(2 * np.abs(b - a).max())) + 1)
    t = np.linspace(0.0, 1.0, n)[None, :, None]
    pts = np.rint(a[:, None] + t * (b - a)[:, None]).reshape(-1, 2).astype(int)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < rgb.shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < rgb.shape[1])
    out[pts[inside, 0], pts[inside, 1]] = colour_rgb
    return out


def png_base64(rgb) -> str:
    """A uint8 (rows, columns, 3) image as a base64 PNG, lossless and as small as is cheap: grey pictures as
    one channel, pictures of at most 256 colours (grey with a coloured outline, a colour map) with a palette
    (a 768 x 768 slice's report: 5.1 -> 3.1 MB; RGB throughout repeated each grey value three times)."""
    buf = _bytesio.BytesIO()
    _as_png_image(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _as_png_image(a):
    """A PIL image of the RGB array ``a``: mode "L" where it is grey, "P" where it has at most 256 colours."""
    from PIL import Image

    if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
        return Image.fromarray(np.ascontiguousarray(a[..., 0]))
    key = (a[..., 0].astype(np.int32) << 16) | (a[..., 1].astype(np.int32) << 8) | a[..., 2]
    colours, index = np.unique(key, return_inverse=True)
    if colours.size > 256:
        return Image.fromarray(a)
    im = Image.fromarray(index.reshape(a.shape[:2]).astype(np.uint8), "P")
    im.putpalette(np.stack([colours >> 16, colours >> 8, colours], 1).astype(np.uint8).ravel().tolist())
    return im


def img_tag(rgb, alt: str) -> str:
    """An <img> of ``rgb`` embedded as a data URI, at its pixel size (CSS may shrink it, never enlarge it)."""
    return (f"<img alt='{text(alt)}' width='{rgb.shape[1]}' height='{rgb.shape[0]}' "
            f"src='data:image/png;base64,{png_base64(rgb)}'>")


def text(s: str) -> str:
    """``s`` escaped for HTML and SVG, in ASCII (other characters as references: the page reads the same
    whatever encoding a reader assumes)."""
    return html.escape(s).encode("ascii", "xmlcharrefreplace").decode("ascii")


def colour_bar(table, labels) -> str:
    """A horizontal colour bar (HTML): ``table``'s gradient, with ``labels`` spread evenly beneath it."""
    strip = np.repeat(table[None], 10, axis=0)
    ticks = "".join(f"<span>{text(t)}</span>" for t in labels)
    return f"<div class='bar'>{img_tag(strip, 'colour scale')}<div class='ticks'>{ticks}</div></div>"


# --------------------------------------------------------------------------- SVG line plots


def nice_ticks(lo: float, hi: float, n: int = 5) -> list:
    """About ``n`` round numbers (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _runs(x, y):
    """The finite stretches of the polyline (x, y)."""
    ok = np.isfinite(x) & np.isfinite(y)
    cuts = np.flatnonzero(np.diff(ok.astype(int))) + 1
    return [(xs, ys) for xs, ys, oks in zip(np.split(x, cuts), np.split(y, cuts), np.split(ok, cuts)) if oks[0]]


def _limits(values):
    v = np.concatenate([np.asarray(a, float).ravel() for a in values])
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.05
    return lo - pad, hi + pad


def svg_plot(series, *, title: str, xlabel: str, vlines=(), width: int = 540, height: int = 280) -> str:
    """An inline SVG line plot.

    ``series``: [(x, y, colour, label or None)], NaN cuts a line; ``vlines``: x positions of dashed
    separators (e.g. where a pyramid level starts). Axes carry round-number ticks; the legend, right
    of the axes (never over the curves), lists the labelled series."""
    labelled = [(col, lab) for _, _, col, lab in series if lab]
    left, right, top, bottom = 64, 150 if labelled else 12, 24, 38
    (x0, x1), (y0, y1) = _limits([s[0] for s in series]), _limits([s[1] for s in series])
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (np.asarray(x, float) - x0) * (pw / (x1 - x0))

    def py(y):
        return top + (y1 - np.asarray(y, float)) * (ph / (y1 - y0))

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
           "font-family='sans-serif' font-size='11'>",
           f"<text x='{left + pw / 2:.1f}' y='15' text-anchor='middle' font-size='12'>{text(title)}</text>",
           f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"]
    for t in nice_ticks(y0, y1):
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{py(t):.1f}' y2='{py(t):.1f}' stroke='#eee'/>"
                   f"<text x='{left - 4}' y='{py(t) + 4:.1f}' text-anchor='end'>{t:.4g}</text>")
    for t in nice_ticks(x0, x1):
        out.append(f"<text x='{px(t):.1f}' y='{top + ph + 14}' text-anchor='middle'>{t:.4g}</text>")
    out += [f"<line x1='{px(v):.1f}' x2='{px(v):.1f}' y1='{top}' y2='{top + ph}' stroke='#999' stroke-dasharray='4 3'/>"
            for v in vlines]
    for x, y, col, _ in series:
        for xs, ys in _runs(np.asarray(x, float), np.asarray(y, float)):
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px(xs), py(ys)))
            out.append(f"<polyline fill='none' stroke='{col}' stroke-width='1.5' points='{pts}'/>")
    for k, (col, lab) in enumerate(labelled):
        x, y = left + pw + 10, top + 10 + 15 * k
        out.append(f"<line x1='{x}' x2='{x + 18}' y1='{y - 4}' y2='{y - 4}' stroke='{col}' stroke-width='2'/>"
                   f"<text x='{x + 22}' y='{y}'>{text(lab)}</text>")
    out += [f"<text x='{left + pw / 2:.1f}' y='{height - 6}' text-anchor='middle'>{text(xlabel)}</text>",
            "</svg>"]
    return "".join(out)
