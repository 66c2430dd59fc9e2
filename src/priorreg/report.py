"""The registration report: ``report.json`` (machine-readable) and ``report.html`` (visual QC).

The HTML page is self-contained: every figure is a PNG rendered with matplotlib's Agg
backend and embedded as base64. 3D images are shown as three orthogonal mid slices.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _bytesio
import json
import platform
import sys

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


def _views(ndim: int, shape) -> list:
    """(title, index, (row axis, column axis)) of the 2D views: the image, or three orthogonal mid slices."""
    if ndim == 2:
        return [("", (slice(None), slice(None)), (0, 1))]
    z, y, x = (n // 2 for n in shape)
    s = slice(None)
    return [
        (f"slice {z} of array axis 0", (z, s, s), (1, 2)),
        (f"slice {y} of array axis 1", (s, y, s), (0, 2)),
        (f"slice {x} of array axis 2", (s, s, x), (0, 1)),
    ]


def _display_range(a):
    lo, hi = np.percentile(a, (0.5, 99.5))
    return float(lo), float(hi if hi > lo else lo + 1)


def _scaled(a, rng):
    lo, hi = rng
    return np.clip((a - lo) / (hi - lo), 0, 1)


def _edges(a, spacing):
    """Edge map of ``a``: Sobel gradient magnitude above the 95th percentile of its non-zero values."""
    from scipy import ndimage

    g = np.zeros(a.shape, dtype=float)
    for k in range(a.ndim):
        g += (ndimage.sobel(a.astype(float), axis=k) / spacing[k]) ** 2
    g = np.sqrt(g)
    nz = g[g > 0]
    if nz.size == 0:
        return np.zeros(a.shape, bool)
    return g > np.percentile(nz, 95)


def _checkerboard(a, b, n=8):
    tiles = [max(1, s // n) for s in a.shape]
    idx = np.indices(a.shape)
    mask = sum(idx[k] // tiles[k] for k in range(a.ndim)) % 2 == 0
    return np.where(mask, a, b)


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


def _png(fig) -> str:
    plt = _plt()
    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(result, prior=None, mask=None) -> list:
    """[(section title, caption, base64 PNG)] for the HTML report."""
    plt = _plt()
    fix = result.fixed
    sp = fix.spacing
    before_img = getattr(result, "moving_on_fixed", None)
    if before_img is None and getattr(result, "moving", None) is not None:
        from .api import warp

        before_img = warp(result.moving, np.zeros((fix.ndim, *fix.shape)), reference=fix)
    after = np.asarray(result.warped.array, float)
    before = after if before_img is None else np.asarray(before_img.array, float)
    fixed = np.asarray(fix.array, float)
    r_f = _display_range(fixed)
    r_m = _display_range(np.concatenate([before.ravel(), after.ravel()]))
    fs, bs, as_ = _scaled(fixed, r_f), _scaled(before, r_m), _scaled(after, r_m)
    views = _views(fix.ndim, fix.shape)
    out = []

    def panel_grid(columns, titles, cell=3.4, colorbar=None):
        """One row per view, one column per ``columns`` entry: callables draw(ax, index, axes)."""
        nrows, ncols = len(views), len(columns)
        fig, axs = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
        for r, (vt, sl, axes_) in enumerate(views):
            aspect = float(sp[axes_[0]] / sp[axes_[1]])
            for c, draw in enumerate(columns):
                ax = axs[r, c]
                ax.set_axis_off()
                draw(ax, sl, aspect)
                ax.set_title(titles[c] + (f"\n{vt}" if vt else ""), fontsize=9)
        fig.tight_layout()
        return _png(fig)

    def show(a, cmap="gray", vmin=0.0, vmax=1.0, overlay=None, cbar=False):
        def draw(ax, sl, aspect):
            im = ax.imshow(a[sl], cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            if overlay is not None:
                e = overlay[sl]
                rgba = np.zeros(e.shape + (4,))
                rgba[e] = (1.0, 0.15, 0.1, 0.9)
                ax.imshow(rgba, aspect=aspect, interpolation="nearest")
            if cbar:
                plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

        return draw

    out.append((
        "Checkerboard: fixed / moving",
        "Alternating tiles of the fixed image and the moving image, before and after registration. "
        "After registration, structures should continue smoothly across tile borders.",
        panel_grid([show(_checkerboard(fs, bs)), show(_checkerboard(fs, as_))], ["before", "after"]),
    ))
    edges = _edges(fixed, sp)
    out.append((
        "Fixed-image edges over the moving image",
        "Red: strong edges of the fixed image drawn over the moving image, before and after registration. "
        "After registration the red contours should follow the moving image's own boundaries.",
        panel_grid([show(bs, overlay=edges), show(as_, overlay=edges)], ["before", "after"]),
    ))
    norm = result.normalization
    fn, bn, an = normalize(fixed, norm), normalize(before, norm), normalize(after, norm)
    out.append((
        "Difference images",
        "Left: warped moving minus moving (normalised intensities): where the registration moved intensity. "
        "Right: |fixed - warped| after a rank (histogram) matching of the moving image to the fixed one, before "
        "and after: for multi-modal pairs read it with care; it should shrink where anatomy matches.",
        panel_grid(
            [
                show(an - bn, cmap="RdBu_r", vmin=-0.5, vmax=0.5, cbar=True),
                show(_rank_diff(fixed, before), cmap="magma", vmin=0, vmax=0.5, cbar=True),
                show(_rank_diff(fixed, after), cmap="magma", vmin=0, vmax=0.5, cbar=True),
            ],
            ["after - before", "|fixed - moving| (ranked), before", "|fixed - moving| (ranked), after"],
        ),
    ))
    u_vox = [result.field[k] / sp[k] for k in range(fix.ndim)]

    def grid_draw(view_axes):
        def draw(ax, sl, aspect):
            ax.imshow(as_[sl], cmap="gray", vmin=0, vmax=1, aspect=aspect, alpha=0.6, interpolation="nearest")
            r, c = view_axes
            ur, uc = u_vox[r][sl], u_vox[c][sl]
            R, C = np.indices(ur.shape)
            Y, X = R + ur, C + uc
            step = max(2, max(ur.shape) // 24)
            for i in range(0, ur.shape[0], step):
                ax.plot(X[i, :], Y[i, :], color="#ffcc00", lw=0.6)
            for j in range(0, ur.shape[1], step):
                ax.plot(X[:, j], Y[:, j], color="#ffcc00", lw=0.6)
            ax.set_xlim(-0.5, ur.shape[1] - 0.5)
            ax.set_ylim(ur.shape[0] - 0.5, -0.5)

        return draw

    jac = result.jacobian
    jmax = max(2.0, float(np.percentile(jac, 99.5)))

    def jac_draw(ax, sl, aspect):
        im = ax.imshow(jac[sl], cmap="RdBu_r", vmin=0, vmax=jmax, aspect=aspect, interpolation="nearest")
        fold = jac[sl] <= 0
        if fold.any():
            rgba = np.zeros(fold.shape + (4,))
            rgba[fold] = (0, 0, 0, 1)
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    js = result.jacobian_stats
    # The grid view needs the view's in-plane axes; draw each row with its own.
    nrows = len(views)
    fig, axs = plt.subplots(nrows, 2, figsize=(7.2, 3.4 * nrows), squeeze=False)
    for r, (vt, sl, axes_) in enumerate(views):
        aspect = float(sp[axes_[0]] / sp[axes_[1]])
        for c, (draw, t) in enumerate(((grid_draw(axes_), "deformation grid"), (jac_draw, "Jacobian determinant"))):
            axs[r, c].set_axis_off()
            draw(axs[r, c], sl, aspect)
            axs[r, c].set_title(t + (f"\n{vt}" if vt else ""), fontsize=9)
    fig.tight_layout()
    out.append((
        "Deformation",
        "Left: the fixed grid's lines mapped through the pull-back field (where each fixed point samples the moving "
        "image), over the warped image. Right: Jacobian determinant det(I + grad u) (1 = volume kept, black = folding). "
        f"min {js['min']:.3f}, max {js['max']:.3f}, {js['percent_nonpositive']:.3f}% of voxels <= 0.",
        _png(fig),
    ))
    opts = result.options
    ranges = result.ranges
    maps = [d for d in ((result.prior or {}).get("intensity_maps") or []) if d.get("level") == 0]
    if maps:  # show the pair as the prior term saw it (the fitted gain/offset per modality)
        (af, bf), (am, bm) = maps[0]["fixed"], maps[0]["moving"]
        fn, bn, an = af * fn + bf, am * bn + bm, am * an + bm
    hists = [
        (_joint_histogram(fn, bn, ranges, opts.bins, opts.parzen_sigma, mask), "observed, before"),
        (_joint_histogram(fn, an, ranges, opts.bins, opts.parzen_sigma, mask), "observed, after"),
    ]
    if prior is not None:
        hists.append((prior.global_table(0), f"learned prior p_L ({prior.n_pairs} pair(s))"))
    fig, axs = plt.subplots(1, len(hists), figsize=(3.5 * len(hists), 3.4), squeeze=False)
    for ax, (H, title) in zip(axs[0], hists):
        ax.imshow(np.log10(H.T + 1e-7), origin="lower", cmap="magma", vmin=-7, aspect="auto",
                  extent=[ranges[0][0], ranges[0][1], ranges[1][0], ranges[1][1]])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fixed intensity (normalised)", fontsize=8)
        ax.set_ylabel("moving intensity (normalised)", fontsize=8)
    fig.tight_layout()
    out.append((
        "Joint intensity histograms",
        "log10 of the Parzen joint histogram of fixed and moving intensities before and after registration"
        + (", next to the learned prior p_L (finest level)." if prior is not None
           else " (no learned prior: alpha = 1, mutual information alone).")
        + " Sharper, more compact clusters mean better alignment.",
        _png(fig),
    ))
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.3))
    start = 0
    keys = []
    for h in result.history:
        e = np.asarray(h.energy, float)
        it = np.arange(start, start + len(e))
        axs[0].plot(it, e, label=f"level {h.level} ({'x'.join(str(s) for s in h.shape)})")
        for t in h.terms:
            for k in t:
                if k not in keys:
                    keys.append(k)
        for j, k in enumerate(keys):
            vals = [t.get(k, np.nan) for t in h.terms]
            axs[1].plot(np.arange(start, start + len(vals)), vals, color=f"C{j}", label=k if start == 0 else None)
        start += len(e)
    for ax, t in zip(axs, ("energy J, coarse to fine", "energy terms")):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("accepted iteration (all levels)", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.append(("Energy", "J = alpha*similarity + (1-alpha)*prior term (KL, CE or cKL to p_L) + lambda*R per accepted iteration, per pyramid level.",
                _png(fig)))
    return out


def _rank_diff(fixed, moving):
    """|rank(fixed) - rank(moving)| in [0, 1]: a modality-agnostic (monotone) difference for display."""
    from scipy.stats import rankdata

    def ranks(a):
        return ((rankdata(a.ravel(), method="average") - 1) / max(a.size - 1, 1)).reshape(a.shape)

    return np.abs(ranks(fixed) - ranks(moving))


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


def render_html(result, report: dict, prior=None, mask=None, extra_html: str = "") -> str:
    """The self-contained HTML page (figures embedded as base64 PNG)."""
    js = result.jacobian_stats
    fold = js["percent_nonpositive"]
    status = (
        '<span class="ok">no folding</span>' if fold == 0
        else f'<span class="warn">{fold:.3f}% of voxels fold (Jacobian &le; 0)</span>'
    )
    in_rows = [(role, info.get("path", "")) for role, info in report.get("inputs", {}).items()]
    geo_rows = [
        (role, "x".join(str(n) for n in g["shape"]), ", ".join(f"{s:.4g}" for s in g["spacing_mm"]),
         ", ".join(f"{o:.4g}" for o in g["origin_mm"]))
        for role, g in report.get("geometry", {}).items()
    ]
    lvl_rows = [
        (h.level, "x".join(str(s) for s in h.shape), h.iterations, h.stop_reason, f"{h.seconds:.2f}",
         f"{h.energy[0]:.6g}" if h.energy else "", f"{h.energy[-1]:.6g}" if h.energy else "")
        for h in result.history
    ]
    o = result.options
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>priorreg registration report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>priorreg registration report</h1>",
        f"<p>{html.escape(report.get('created', ''))} &middot; device {html.escape(result.device)} &middot; "
        f"{result.seconds:.1f} s &middot; final energy {result.final_energy:.6g} &middot; {status}</p>",
        f"<p>alpha = {o.alpha:g} "
        + ("(mutual information alone)" if o.alpha == 1 else "(mutual information blended with the learned prior)")
        + f", regularization &lambda; = {o.regularization:g}"
        + (" (times alpha at levels with 0 &lt; alpha &lt; 1)" if o.regularization_scaling == "alpha" else "")
        + f", {len(result.history)} pyramid level(s), "
        f"Jacobian min {js['min']:.3f} / max {js['max']:.3f}.</p>",
        "".join(f'<p><span class="warn">warning:</span> {html.escape(w)}</p>' for w in getattr(result, "warnings", [])),
        extra_html,
        "<h2>Inputs</h2>",
        _table(in_rows, ["role", "path"]) if in_rows else "",
        _table(geo_rows, ["image", "shape (array order)", "spacing mm", "origin mm (LPS)"]),
    ]
    for title, caption, b64 in figures(result, prior, mask):
        parts += [
            f"<h2>{html.escape(title)}</h2>",
            f"<p class='cap'>{html.escape(caption)}</p>",
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>",
        ]
    parts += [
        "<h2>Pyramid levels</h2>",
        _table(lvl_rows, ["level", "shape", "iterations", "stop reason", "seconds", "J start", "J end"]),
        "<h2>Options</h2>",
        _table([(k, _fmt(v)) for k, v in o.as_dict().items()], ["option", "value"]),
        "<h2>Software</h2>",
        _table(list(report.get("versions", {}).items()), ["package", "version"]),
        "<p class='cap'>field.nii.gz is an ITK vector image on the fixed grid in world LPS millimetres, pull-back: "
        "fixed point x maps to x + field(x) in the moving image (SimpleITK DisplacementFieldTransform, ANTs "
        "apply_transforms).</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_html(path, result, report: dict, prior=None, mask=None, extra_html: str = "") -> None:
    """Write the HTML report atomically."""
    pio.write_bytes(path, render_html(result, report, prior, mask, extra_html).encode("utf-8"))
