"""The registration report: ``report.json`` (machine-readable) and ``report.html`` (visual QC).

The HTML page is self-contained: every figure is a PNG rendered with matplotlib's Agg
backend and embedded as base64. 3D images are shown as three orthogonal mid slices.
:data:`PANELS` lists the figures, one small function each; they read what they share from
one :class:`_Data`, computed once. Laid out with fixed margins rather than tight_layout
(which measures every text and cost more than drawing), the figures cost a fraction of
a registration (issue 17).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _bytesio
import json
import platform
import sys
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import io as pio
from .intensity import normalize


# --------------------------------------------------------------------------- JSON


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("priorreg", "torch", "numpy", "scipy", "SimpleITK", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def report_dict(result, inputs: dict | None = None, extra: dict | None = None) -> dict:
    """Everything about a run: options, versions, device, per-level history, Jacobian, geometry.

    ``inputs`` maps a role ("fixed", "moving", "mask", "prior") to a dict with at least
    ``path``; ``extra`` is merged in at the top level (e.g. the demo's endpoint errors).
    """
    geo = {"fixed": pio.geometry(result.fixed)}
    if getattr(result, "moving", None) is not None:
        geo["moving"] = pio.geometry(result.moving)
    d = {
        "priorreg_report": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs or {},
        "geometry": geo,
        "field_convention": (
            "field.nii.gz: ITK vector image on the fixed grid, world LPS (x, y, z) mm, pull-back: "
            "fixed point x maps to x + field(x) in the moving image"
        ),
        "versions": package_versions(),
        **_device_info(result.device),
        **result.as_dict(),
    }
    d["summary"] = {
        "seconds": result.seconds,
        "final_energy": result.final_energy,
        "iterations": [h.iterations for h in result.history],
        "percent_folding": result.jacobian_stats["percent_nonpositive"],
        "percent_outside_fov": percent_outside(field_of_view(result)),
    }
    if extra:
        d.update(extra)
    return d


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_json(path, data: dict) -> None:
    """Write ``data`` as JSON, atomically (NaN/Inf become null)."""
    pio.write_bytes(path, (json.dumps(_jsonable(data), indent=2) + "\n").encode())


# --------------------------------------------------------------------------- figures


FOV_COLOR = "#00e5ff"  # outline of the moving image's field of view


@dataclass(frozen=True)
class _View:
    """One 2D view of the fixed grid: the whole 2D image, or a mid slice of a 3D one."""

    title: str
    sl: tuple  # index into a fixed-grid array
    axes: tuple  # (row axis, column axis) of the view in array order
    aspect: float  # pixel aspect: spacing of the row axis / spacing of the column axis


def _views(ndim: int, shape, spacing) -> list:
    """The image (2D), or three orthogonal mid slices (3D)."""
    s = slice(None)
    if ndim == 2:
        picks = [("", (s, s), (0, 1))]
    else:
        z, y, x = (n // 2 for n in shape)
        picks = [(f"slice {z} of array axis 0", (z, s, s), (1, 2)),
                 (f"slice {y} of array axis 1", (s, y, s), (0, 2)),
                 (f"slice {x} of array axis 2", (s, s, x), (0, 1))]
    return [_View(t, sl, ax, float(spacing[ax[0]] / spacing[ax[1]])) for t, sl, ax in picks]


def _display_range(a):
    lo, hi = np.percentile(a, (0.5, 99.5))
    return float(lo), float(hi if hi > lo else lo + 1)


def _scaled(a, rng):
    lo, hi = rng
    return np.clip((a - lo) / (hi - lo), 0, 1)


def _edges(a, spacing):
    """Edge map of ``a``: Sobel gradient magnitude above the 95th percentile of its non-zero values."""
    from scipy import ndimage

    a = np.asarray(a, dtype=float)
    g = np.zeros(a.shape, dtype=float)
    for k in range(a.ndim):
        g += (ndimage.sobel(a, axis=k) / spacing[k]) ** 2
    g = np.sqrt(g)
    nz = g[g > 0]
    if nz.size == 0:
        return np.zeros(a.shape, bool)
    return g > np.percentile(nz, 95)


def _checkerboard(a, b, n=8):
    """Tiles of ``a`` and ``b`` (about ``n`` tiles per axis)."""
    tiles = [max(1, s // n) for s in a.shape]
    parity = sum((np.arange(s) // t).reshape([-1 if j == k else 1 for j in range(a.ndim)])
                 for k, (s, t) in enumerate(zip(a.shape, tiles)))
    return np.where(parity % 2 == 0, a, b)


def _ranker(a):
    """Function of values of ``a``: their average rank in ``a``, scaled to [0, 1] (scipy's rankdata, 'average')."""
    srt = np.sort(np.asarray(a).ravel())
    scale = max(srt.size - 1, 1)

    def ranks(v):
        left, right = np.searchsorted(srt, v, "left"), np.searchsorted(srt, v, "right")
        return (left + right - 1) / 2.0 / scale

    return ranks


def _rank_diff(fixed, moving, rank_fixed=None):
    """|rank(fixed) - rank(moving)| in [0, 1], a modality-agnostic (monotone) difference, as a function of a view.

    Ranks are over the whole images; only the views' voxels are looked up. ``rank_fixed``: ``_ranker(fixed)``."""
    rf, rm = rank_fixed or _ranker(fixed), _ranker(moving)
    return lambda v: np.abs(rf(fixed[v.sl]) - rm(moving[v.sl]))


def field_of_view(result):
    """Boolean map on the fixed grid: where the warped moving image has data (``result.fov`` when present,
    else an all-ones moving image warped through the field, > 0.5); None without a moving image."""
    fov = getattr(result, "fov", None)
    if fov is not None:
        return np.asarray(fov, dtype=bool)
    mov = getattr(result, "moving", None)
    if mov is None:
        return None
    from .api import warp

    ones = mov.with_array(np.ones(mov.shape))
    return np.asarray(warp(ones, result.field, reference=result.fixed).array) > 0.5


def percent_outside(fov) -> float | None:
    """Percentage of the fixed grid outside the moving image's field of view."""
    return None if fov is None else float(100.0 * (1.0 - np.mean(fov)))


def _joint_histogram(f, m, ranges, bins, sigma, mask=None):
    # The engine's Parzen table (float64, CPU): the histogram the registration optimised.
    import torch

    from . import histogram as hist

    x = torch.as_tensor(np.asarray(f, dtype=np.float64).reshape(-1))
    y = torch.as_tensor(np.asarray(m, dtype=np.float64).reshape(-1))
    w = None if mask is None else torch.as_tensor((np.asarray(mask) > 0).reshape(-1).astype(np.float64))
    P = hist.parzen_joint_histogram(x, y, ranges, hist.smoothing_matrix(bins, sigma), w)
    return P.numpy()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


DPI = 80


def _png(fig) -> str:
    """The figure (laid out by :func:`_margins`) as a base64 PNG; closes it."""
    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})  # fast; about 15% larger
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _Data:
    """What the panels read, computed once per report, each item on first use."""

    def __init__(self, result, prior=None, mask=None, fov=None):
        self.result, self.prior, self.mask = result, prior, mask
        fix = result.fixed
        self.spacing = fix.spacing
        self.views = _views(fix.ndim, fix.shape, fix.spacing)
        self.fixed = np.asarray(fix.array, float)
        self.after = np.asarray(result.warped.array, float)
        before = _before_image(result)
        self.before = self.after if before is None else np.asarray(before.array, float)
        self.fov = field_of_view(result) if fov is None else fov

    @cached_property
    def scaled(self):
        """(fixed, before, after) scaled to [0, 1] for display; moving ones share one range."""
        r_m = _display_range(np.concatenate([self.before.ravel(), self.after.ravel()]))
        return _scaled(self.fixed, _display_range(self.fixed)), _scaled(self.before, r_m), _scaled(self.after, r_m)

    @cached_property
    def normalized(self):
        """(fixed, before, after) normalised as the registration normalised them."""
        norm = self.result.normalization
        return normalize(self.fixed, norm), normalize(self.before, norm), normalize(self.after, norm)

    @cached_property
    def linear_only(self):
        """The moving image through the linear stage alone, scaled like ``scaled``'s moving images."""
        from .linear import linear_to_field
        from .resample import warp

        r = self.result
        a = np.asarray(warp(r.moving, linear_to_field(r.linear, r.fixed), reference=r.fixed).array, float)
        return _scaled(a, _display_range(np.concatenate([self.before.ravel(), self.after.ravel()])))

    @property
    def fov_outline(self):
        """The field of view to outline, or None when it covers the whole fixed grid."""
        return None if self.fov is None or self.fov.all() else self.fov


def _before_image(result):
    """The moving image on the fixed grid before registration (zero field), or None."""
    img = getattr(result, "moving_on_fixed", None)
    if img is None and getattr(result, "moving", None) is not None:
        from .api import warp

        fix = result.fixed
        img = warp(result.moving, np.zeros((fix.ndim, *fix.shape)), reference=fix)
    return img


def _at(a, v):
    """The view ``v`` of ``a``: an array on the fixed grid, or a function of the view."""
    return a(v) if callable(a) else a[v.sl]


def _grid(d, columns, titles, size=(3.4, 3.4)) -> str:
    """One row per view, one column per ``columns`` entry (draw(ax, view)); base64 PNG."""
    nrows, ncols = len(d.views), len(columns)
    fig, axs = _plt().subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for r, v in enumerate(d.views):
        for c, draw in enumerate(columns):
            axs[r, c].set_axis_off()
            draw(axs[r, c], v)
            axs[r, c].set_title(titles[c] + (f"\n{v.title}" if v.title else ""), fontsize=9)
    title_lines = 2 if d.views[0].title else 1
    colorbars = len(fig.axes) > nrows * ncols  # room for their tick labels right of every image
    _margins(fig, ncols, nrows, left=0.05, bottom=0.05, right=0.5 if colorbars else 0.05, top=0.1 + 0.16 * title_lines)
    return _png(fig)


def _margins(fig, ncols, nrows, left, bottom, right, top):
    """Space in inches around every axes of a ``nrows`` x ``ncols`` grid: ``left`` for y labels, ``bottom`` for
    x labels, ``right`` for a colorbar, ``top`` for the title (instead of tight_layout, which measures every
    text and costs more than drawing the figure)."""
    w, h = fig.get_size_inches()
    aw, ah = w / ncols - left - right, h / nrows - bottom - top
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=(left + right) / aw, hspace=(top + bottom) / ah)


def _layer(ax, m, rgba, v):
    """Paint the True pixels of the 2D mask ``m`` in colour ``rgba``."""
    if m.any():
        img = np.zeros(m.shape + (4,))
        img[m] = rgba
        ax.imshow(img, aspect=v.aspect, interpolation="nearest")


def _outline(ax, m):
    """Draw the border of the 2D mask ``m`` (the moving field of view) without changing the axes' limits."""
    if m.any() and not m.all():
        lims = ax.get_xlim(), ax.get_ylim()
        ax.contour(m.astype(float), levels=[0.5], colors=FOV_COLOR, linewidths=1.0)
        ax.set_xlim(lims[0])
        ax.set_ylim(lims[1])


def _show(a, cmap="gray", vmin=0.0, vmax=1.0, overlay=None, cbar=False, outline=None):
    """draw(ax, view) of ``a``, optionally with a red mask overlay, a colorbar and a field-of-view outline."""
    def draw(ax, v):
        im = ax.imshow(_at(a, v), cmap=cmap, vmin=vmin, vmax=vmax, aspect=v.aspect, interpolation="nearest")
        if overlay is not None:
            _layer(ax, overlay[v.sl], (1.0, 0.15, 0.1, 0.9), v)
        if outline is not None:
            _outline(ax, outline[v.sl])
        if cbar:
            _plt().colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    return draw


def _fov_caption(d) -> str:
    if d.fov_outline is None:
        return ""
    return (f" Cyan line (after): the moving image's field of view on the fixed grid; "
            f"{percent_outside(d.fov):.1f}% of the fixed grid lies outside it, where the warped image is 0.")


def panel_checkerboard(d):
    fs, bs, as_ = d.scaled
    return (
        "Checkerboard: fixed / moving",
        "Alternating tiles of the fixed image and the moving image, before and after registration. "
        "After registration, structures should continue smoothly across tile borders." + _fov_caption(d),
        _grid(d, [_show(_checkerboard(fs, bs)), _show(_checkerboard(fs, as_), outline=d.fov_outline)],
              ["before", "after"]),
    )


def panel_edges(d):
    _, bs, as_ = d.scaled
    edges = _edges(d.fixed, d.spacing)
    return (
        "Fixed-image edges over the moving image",
        "Red: strong edges of the fixed image drawn over the moving image, before and after registration. "
        "After registration the red contours should follow the moving image's own boundaries." + _fov_caption(d),
        _grid(d, [_show(bs, overlay=edges), _show(as_, overlay=edges, outline=d.fov_outline)], ["before", "after"]),
    )


def panel_differences(d):
    _, bn, an = d.normalized
    ranked, rf = dict(cmap="magma", vmin=0, vmax=0.5, cbar=True), _ranker(d.fixed)
    return (
        "Difference images",
        "Left: warped moving minus moving (normalised intensities): where the registration moved intensity. "
        "Right: |fixed - warped| after a rank (histogram) matching of the moving image to the fixed one, before "
        "and after: for multi-modal pairs read it with care; it should shrink where anatomy matches.",
        _grid(d, [_show(an - bn, cmap="RdBu_r", vmin=-0.5, vmax=0.5, cbar=True),
                  _show(_rank_diff(d.fixed, d.before, rf), **ranked),
                  _show(_rank_diff(d.fixed, d.after, rf), **ranked)],
              ["after - before", "|fixed - moving| (ranked), before", "|fixed - moving| (ranked), after"]),
    )


def _draw_grid_lines(d):
    """draw(ax, view): the fixed grid's lines displaced by the field (in voxels), over the warped image."""
    as_ = d.scaled[2]

    def draw(ax, v):
        ax.imshow(as_[v.sl], cmap="gray", vmin=0, vmax=1, aspect=v.aspect, alpha=0.6, interpolation="nearest")
        r, c = v.axes
        ur, uc = d.result.field[r][v.sl] / d.spacing[r], d.result.field[c][v.sl] / d.spacing[c]
        R, C = np.indices(ur.shape)
        Y, X = R + ur, C + uc
        step = max(2, max(ur.shape) // 24)
        ax.plot(X[::step, :].T, Y[::step, :].T, color="#ffcc00", lw=0.6)
        ax.plot(X[:, ::step], Y[:, ::step], color="#ffcc00", lw=0.6)
        ax.set_xlim(-0.5, ur.shape[1] - 0.5)
        ax.set_ylim(ur.shape[0] - 0.5, -0.5)

    return draw


def _draw_jacobian(d):
    """draw(ax, view): det(I + grad u), folding (<= 0) in black."""
    jac = d.result.jacobian
    jmax = max(2.0, float(np.percentile(jac, 99.5)))

    def draw(ax, v):
        im = ax.imshow(jac[v.sl], cmap="RdBu_r", vmin=0, vmax=jmax, aspect=v.aspect, interpolation="nearest")
        _layer(ax, jac[v.sl] <= 0, (0, 0, 0, 1), v)
        _plt().colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    return draw


def panel_deformation(d):
    js = d.result.jacobian_stats
    return (
        "Deformation",
        "Left: the fixed grid's lines mapped through the pull-back field (where each fixed point samples the moving "
        "image), over the warped image. Right: Jacobian determinant det(I + grad u) (1 = volume kept, black = folding). "
        f"min {js['min']:.3f}, max {js['max']:.3f}, {js['percent_nonpositive']:.3f}% of voxels <= 0.",
        _grid(d, [_draw_grid_lines(d), _draw_jacobian(d)], ["deformation grid", "Jacobian determinant"],
              size=(3.6, 3.4)),
    )


def _histograms(d) -> list:
    """[(table, title)]: observed before and after (as the prior term saw the pair), and the prior."""
    r, o = d.result, d.result.options
    fn, bn, an = d.normalized
    maps = [m for m in ((r.prior or {}).get("intensity_maps") or []) if m.get("level") == 0]
    if maps:  # the fitted gain/offset per modality
        (af, bf), (am, bm) = maps[0]["fixed"], maps[0]["moving"]
        fn, bn, an = af * fn + bf, am * bn + bm, am * an + bm
    inside = None if d.fov is None or d.fov.all() else d.fov.astype(float)  # no zeros from outside the moving image
    sample = inside if d.mask is None else (d.mask if inside is None else (np.asarray(d.mask) > 0) * inside)
    out = [(_joint_histogram(fn, m, r.ranges, o.bins, o.parzen_sigma, sample), t)
           for m, t in ((bn, "observed, before"), (an, "observed, after"))]
    if d.prior is not None:
        out.append((d.prior.global_table(0), f"learned prior p_L ({d.prior.n_pairs} pair(s))"))
    return out


def panel_histograms(d):
    hists, (rf, rm) = _histograms(d), d.result.ranges
    fig, axs = _plt().subplots(1, len(hists), figsize=(3.5 * len(hists), 3.4), squeeze=False)
    for ax, (H, title) in zip(axs[0], hists):
        ax.imshow(np.log10(H.T + 1e-7), origin="lower", cmap="magma", vmin=-7, aspect="auto",
                  extent=[rf[0], rf[1], rm[0], rm[1]])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fixed intensity (normalised)", fontsize=8)
        ax.set_ylabel("moving intensity (normalised)", fontsize=8)
    _margins(fig, len(hists), 1, left=0.8, bottom=0.45, right=0.15, top=0.3)
    return (
        "Joint intensity histograms",
        "log10 of the Parzen joint histogram of fixed and moving intensities before and after registration"
        + (", next to the learned prior p_L (finest level)." if d.prior is not None
           else " (no learned prior: alpha = 1, mutual information alone).")
        + " Sharper, more compact clusters mean better alignment.",
        _png(fig),
    )


def _plot_energy(axs, history):
    """Total energy (left) and each term (right) per accepted iteration, levels one after another."""
    start, keys = 0, []
    for h in history:
        e = np.asarray(h.energy, float)
        axs[0].plot(np.arange(start, start + len(e)), e, label=f"level {h.level} ({'x'.join(str(s) for s in h.shape)})")
        keys += [k for k in dict.fromkeys(k for t in h.terms for k in t) if k not in keys]
        for j, k in enumerate(keys):
            vals = [t.get(k, np.nan) for t in h.terms]
            axs[1].plot(np.arange(start, start + len(vals)), vals, color=f"C{j}", label=k if start == 0 else None)
        start += len(e)


def panel_energy(d):
    fig, axs = _plt().subplots(1, 2, figsize=(10, 3.3))
    _plot_energy(axs, d.result.history)
    for ax, t in zip(axs, ("energy J, coarse to fine", "energy terms")):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("accepted iteration (all levels)", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _margins(fig, 2, 1, left=0.6, bottom=0.45, right=0.1, top=0.3)
    return ("Energy", "J = alpha*similarity + (1-alpha)*prior term (KL, CE or cKL to p_L) + lambda*R per accepted "
            "iteration, per pyramid level.", _png(fig))


def panel_linear(d):
    """The linear stage on its own (only when it ran)."""
    if getattr(d.result, "linear", None) is None:
        return None
    fs, bs, _ = d.scaled
    lin = d.result.linear
    return (
        "Linear stage: before / after",
        f"Checkerboards of the fixed image with the moving image at world alignment and after the {lin.kind} "
        "stage alone (before the deformable stage). Rotation, translation, scales and shears are in the summary.",
        _grid(d, [_show(_checkerboard(fs, bs)), _show(_checkerboard(fs, d.linear_only))],
              ["world alignment", f"after the {lin.kind} stage"]),
    )


PANELS = (panel_linear, panel_checkerboard, panel_edges, panel_differences, panel_deformation, panel_histograms,
          panel_energy)


def figures(result, prior=None, mask=None, fov=None) -> list:
    """[(section title, caption, base64 PNG)] for the HTML report, one per entry of :data:`PANELS`.

    ``fov``: the moving field of view on the fixed grid, if already known (:func:`field_of_view`)."""
    d = _Data(result, prior, mask, fov)
    return [f for f in (panel(d) for panel in PANELS) if f is not None]


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4} .cap{color:#555;font-size:.9em;max-width:900px} img{max-width:100%;height:auto}
.ok{color:#1a7f37;font-weight:600} .warn{color:#b35900;font-weight:600}
"""


def _table(rows, header=None) -> str:
    h = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{h}{body}</table>"


def _fmt(x):
    return f"{x:.6g}" if isinstance(x, float) else x


def _status(result) -> str:
    fold = result.jacobian_stats["percent_nonpositive"]
    if fold == 0:
        return '<span class="ok">no folding</span>'
    return f'<span class="warn">{fold:.3f}% of voxels fold (Jacobian &le; 0)</span>'


def _head(result, report: dict) -> list:
    """Title, the one-line outcome, the energy's settings and the run's warnings."""
    js, o = result.jacobian_stats, result.options
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>priorreg registration report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>priorreg registration report</h1>",
        f"<p>{html.escape(report.get('created', ''))} &middot; device {html.escape(result.device)} &middot; "
        f"{result.seconds:.1f} s &middot; final energy {result.final_energy:.6g} &middot; {_status(result)}</p>",
        f"<p>alpha = {o.alpha if isinstance(o.alpha, str) else format(o.alpha, 'g')} "
        + ("(mutual information alone)" if o.alpha == 1 else "(chosen per level, see the summary)" if isinstance(o.alpha, str)
           else "(mutual information blended with the learned prior)")
        + f", regularization &lambda; = {o.regularization:g}"
        + (" (times alpha at levels with 0 &lt; alpha &lt; 1)" if o.regularization_scaling == "alpha" else "")
        + f", {len(result.history)} pyramid level(s), "
        f"Jacobian min {js['min']:.3f} / max {js['max']:.3f}.</p>",
        "".join(f'<p><span class="warn">warning:</span> {html.escape(w)}</p>' for w in getattr(result, "warnings", [])),
    ]


def _summary(result, fov) -> list:
    """The summary table: time, energy, Jacobian, and how much of the fixed grid the moving image covers."""
    js, out = result.jacobian_stats, percent_outside(fov)
    rows = [
        ("run time", f"{result.seconds:.1f} s"),
        ("final energy", f"{result.final_energy:.6g}"),
        ("Jacobian min / max", f"{js['min']:.3f} / {js['max']:.3f}"),
        ("voxels folding (Jacobian <= 0)", f"{js['percent_nonpositive']:.3f}%"),
        ("fixed grid outside the moving field of view", "n/a" if out is None else f"{out:.1f}%"),
        *_linear_rows(getattr(result, "linear", None)),
        *_alpha_rows(getattr(result, "prior_weights", None) or []),
    ]
    return ["<h2>Summary</h2>", _table(rows)]


def _alpha_rows(weights) -> list:
    """alpha="auto": per level, the alpha chosen and why."""
    return [(f"alpha at level {w['level']} (auto)", f"{w['alpha']:.2f}: {w.get('reason') or w.get('note') or ''}")
            for w in weights]


def _linear_rows(lin) -> list:
    """The linear stage's transform, as a reader checks it: degrees, mm, scales, shears."""
    if lin is None:
        return []

    def nums(xs, unit=""):
        return ", ".join(f"{x:.2f}{unit}" for x in xs)

    return [
        (f"linear stage ({lin.kind}): rotation", nums(lin.rotation_degrees, " deg")),
        ("linear stage: translation (world LPS)", nums(lin.translation_mm, " mm")),
        ("linear stage: scales / shears", f"{nums(lin.scales)} / {nums(lin.shears)}"),
    ]


def _inputs(report: dict) -> list:
    in_rows = [(role, info.get("path", "")) for role, info in report.get("inputs", {}).items()]
    geo_rows = [
        (role, "x".join(str(n) for n in g["shape"]), ", ".join(f"{s:.4g}" for s in g["spacing_mm"]),
         ", ".join(f"{o:.4g}" for o in g["origin_mm"]))
        for role, g in report.get("geometry", {}).items()
    ]
    return [
        "<h2>Inputs</h2>",
        _table(in_rows, ["role", "path"]) if in_rows else "",
        _table(geo_rows, ["image", "shape (array order)", "spacing mm", "origin mm (LPS)"]),
    ]


def _figure(title, caption, b64) -> str:
    return (f"<h2>{html.escape(title)}</h2>\n<p class='cap'>{html.escape(caption)}</p>\n"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")


def _tail(result, report: dict) -> list:
    """Pyramid levels, options, software versions and the field convention."""
    lvl_rows = [
        (h.level, "x".join(str(s) for s in h.shape), h.iterations, h.stop_reason, f"{h.seconds:.2f}",
         f"{h.energy[0]:.6g}" if h.energy else "", f"{h.energy[-1]:.6g}" if h.energy else "")
        for h in result.history
    ]
    return [
        "<h2>Pyramid levels</h2>",
        _table(lvl_rows, ["level", "shape", "iterations", "stop reason", "seconds", "J start", "J end"]),
        "<h2>Options</h2>",
        _table([(k, _fmt(v)) for k, v in result.options.as_dict().items()], ["option", "value"]),
        "<h2>Software</h2>",
        _table(list(report.get("versions", {}).items()), ["package", "version"]),
        "<p class='cap'>field.nii.gz is an ITK vector image on the fixed grid in world LPS millimetres, pull-back: "
        "fixed point x maps to x + field(x) in the moving image (SimpleITK DisplacementFieldTransform, ANTs "
        "apply_transforms).</p>",
        "</body></html>",
    ]


def render_html(result, report: dict, prior=None, mask=None, extra_html: str = "") -> str:
    """The self-contained HTML page (figures embedded as base64 PNG)."""
    fov = field_of_view(result)
    figs = [_figure(*f) for f in figures(result, prior, mask, fov)]
    parts = [*_head(result, report), extra_html, *_summary(result, fov), *_inputs(report), *figs,
             *_tail(result, report)]
    return "\n".join(parts)


def write_html(path, result, report: dict, prior=None, mask=None, extra_html: str = "") -> None:
    """Write the HTML report atomically."""
    pio.write_bytes(path, render_html(result, report, prior, mask, extra_html).encode("utf-8"))
