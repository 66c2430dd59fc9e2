"""The registration report: ``report.json`` (machine-readable) and ``report.html`` (visual QC).

The HTML page is self-contained. :data:`PANELS` lists its sections, one small function each;
they read what they share from one :class:`_Data`, computed once. Pictures are composed as RGB
arrays and embedded as PNGs (:mod:`priorreg.pictures`: no plotting library, whose import and
drawing cost more than a 2D registration: benchmarks/README.md, "Whole-process speed"); titles, colour-scale ranges and view
names are HTML text; the energy curves are inline SVG. 3D images are shown as three
orthogonal mid slices, each resampled to its physical proportions.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import platform
import sys
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import io as pio
from . import pictures as pic
from .intensity import normalizer, otsu_threshold
from .transform import rotation_angle
from .pyramid import level_label, level_number


# --------------------------------------------------------------------------- JSON


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("priorreg", "torch", "numpy", "scipy", "SimpleITK", "Pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _device_info(device: str, threads: int | None = None) -> dict:
    import torch

    info = {"device": device, "torch_threads": threads or torch.get_num_threads()}
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
        **_device_info(result.device, getattr(result, "threads", None)),
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


FOV_RGB = (0, 229, 255)  # cyan: outline of the moving image's field of view
EDGE_RGB = (255, 38, 26)  # red: the fixed image's edges
GRID_RGB = (255, 204, 0)  # yellow: the deformed grid lines
NO_DATA_RGB = (128, 128, 128)  # grey: no moving-image data in a difference image (neither colour map has it; black is
# the ranked map's 0, "no difference")


@dataclass(frozen=True)
class _View:
    """One 2D view of the fixed grid: the whole 2D image, or a mid slice of a 3D one."""

    title: str
    sl: tuple  # index into a fixed-grid array (reversed along an axis the view shows flipped)
    axes: tuple  # (row axis, column axis) of the view as shown, in array axes
    aspect: float  # pixel aspect: spacing of the row axis / spacing of the column axis
    flips: tuple = (False, False)  # (rows, columns) shown in reverse array order
    transposed: bool = False  # rows are the later array axis (a volume stored sagittal first)

    def take(self, a):
        """The view of a fixed-grid array, as shown."""
        x = a[self.sl]
        return x.T if self.transposed else x


def _views(fixed, centre=None) -> list:
    """The image (2D), or three orthogonal slices (3D) through the voxel ``centre`` (default the grid's middle),
    each turned as a viewer shows anatomy (_turn) and titled with its plane, its voxel index (i, j, k as ITK and
    3D Slicer count) and the patient's side at its top and left edges (_sides)."""
    s, shape, spacing = slice(None), fixed.shape, fixed.spacing
    centre = [n // 2 for n in shape] if centre is None else centre
    if fixed.ndim == 2:
        picks = [("", [s, s], (0, 1))]
    else:
        picks = [(f"slice {'kji'[k]}={centre[k]} of {n}", [centre[k] if a == k else s for a in range(3)],
                  tuple(a for a in range(3) if a != k)) for k, n in enumerate(shape)]
    views = []
    for title, sl, ax in picks:
        shown, flips = _turn(fixed, ax)
        for axis, flip in zip(shown, flips):
            sl[axis] = slice(None, None, -1) if flip else s
        views.append(_View(_sides(fixed, shown, flips, title), tuple(sl), shown,
                           float(spacing[shown[0]] / spacing[shown[1]]), flips, shown != ax))
    return views


_SIDE = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}  # (LPS axis, sign) -> side
_PLANE = {0: "sagittal", 1: "coronal", 2: "axial"}  # by the world axis a slice is across


OBLIQUE_DEGREES = 3.0  # a view whose plane's normal is tilted this far from a world axis is named oblique


def _sides(fixed, shown, flips, title: str) -> str:
    """``title`` led by the view's plane and followed by the patient's side at its top and left edges
    ('axial slice k=7 of 14; top A, left R': k, j, i index the voxels as in ITK and 3D Slicer), by the world axis each shown array axis runs
    closest to; ``title`` as it is for an image without a place in the world (a PNG)."""
    vol = getattr(fixed, "volume", None)
    if fixed.ndim == 2 and vol is None:
        return title
    world = (0, 1, 2) if fixed.ndim == 3 else tuple(a for a in range(3) if a != vol.drop)
    D = np.asarray(fixed.direction, float)
    side = []
    for k, flip in zip(shown, flips):  # down the rows, then to the right along the columns
        j = int(np.argmax(np.abs(D[:, k])))
        side.append(_SIDE[world[j], -int(np.sign(D[j, k])) * (-1 if flip else 1)])  # the side it comes from
    plane = _PLANE[next(w for w in range(3) if w not in {world[int(np.argmax(np.abs(D[:, k])))] for k in shown})]
    if fixed.ndim == 3:  # drawn in the voxels' plane, named by the nearest: its normal's tilt (a slice is never oblique)
        normal = next(k for k in range(3) if k not in shown)
        tilt = math.degrees(math.acos(min(1.0, float(np.abs(D[:, normal]).max()))))
        plane += f" (oblique, {tilt:.0f} deg)" if tilt >= OBLIQUE_DEGREES else ""
    return f"{plane} {title}".strip() + f"; top {side[0]}, left {side[1]}"


_UP_RANK = {2: 0, 1: 1, 0: 2}  # which world (LPS) axis runs up the screen: superior, else anterior, else right


def _turn(fixed, axes) -> tuple:
    """((row axis, column axis), (flip rows, flip columns)) that show superior up (else anterior, else the
    patient's right) and the patient's left, posterior or superior to the right, as viewers do, whatever the
    storage order: by the world axis each array axis runs closest to. A coronal slice of an LPS-stored brain
    was upside down, and one of a volume stored sagittal first lay on its side. A PNG shows as the file does."""
    vol = getattr(fixed, "volume", None)
    world = (0, 1, 2) if fixed.ndim == 3 else tuple(a for a in range(3) if a != vol.drop) if vol is not None else (0, 1)
    D = np.asarray(fixed.direction, float)
    nearest = {k: int(np.argmax(np.abs(D[:, k]))) for k in axes}  # the world axis array axis k runs closest to
    near = {k: (world[j], D[j, k]) for k, j in nearest.items()}  # (that world axis, the sign of the run)
    rows, cols = sorted(axes, key=lambda k: (_UP_RANK[near[k][0]], axes.index(k)))
    (wr, sr), (_, sc) = near[rows], near[cols]
    return (rows, cols), ((bool(sr > 0) if wr == 2 else bool(sr < 0)), bool(sc < 0))


def _display_range(a):
    """(lo, hi): the 0.5th and 99.5th percentiles of (every n-th voxel of) ``a``."""
    lo, hi = np.percentile(_every_nth(a), (0.5, 99.5))
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
    positive = g > 0
    if not positive.any():
        return np.zeros(a.shape, bool)
    return g > np.percentile(_every_nth(g[positive]), 95)


def _anatomy_centre(fixed: np.ndarray, fov) -> list:
    """The voxel the 3D views pass through: the centroid of the fixed anatomy (above Otsu's threshold) that the
    moving image covers, else of the fixed anatomy. The grid's middle showed no moving data beside a slab, and
    background where the anatomy sat off centre in a padded grid."""
    body = fixed > otsu_threshold(_every_nth(fixed))
    both = body if fov is None else body & fov
    region = both if both.any() else body
    if not region.any():
        return [n // 2 for n in fixed.shape]
    centre = []
    for k, n in enumerate(fixed.shape):
        profile = region.sum(axis=tuple(a for a in range(fixed.ndim) if a != k))
        centre.append(min(n - 1, int(round(float(np.arange(n) @ profile) / float(profile.sum())))))
    return centre


def _even_tiles(shape, spacing, n=8) -> np.ndarray:
    """Where a checkerboard shows its first image: square tiles (in mm) of about 1/``n`` of the grid's longest
    extent, and along a shorter axis at most half its extent, so that it has two at least (thin slabs of thick
    slices had stripes of 16 x 2 voxels)."""
    extent = np.asarray(shape) * np.asarray(spacing, dtype=float)
    tiles = [max(1, int(min(extent.max() / n, e / 2) / sp)) for e, sp in zip(extent, spacing)]
    parity = sum((np.arange(s) // t).reshape([-1 if j == k else 1 for j in range(len(shape))])
                 for k, (s, t) in enumerate(zip(shape, tiles)))
    return parity % 2 == 0


def _checkerboard(d, a, b):
    """Function of a view: the fixed grid's checkerboard tiles of ``a`` and ``b`` (arrays on the fixed grid or
    functions of a view), computed on the view's voxels only."""
    return lambda v: np.where(v.take(d.even_tiles), _at(a, v), _at(b, v))


FIGURE_MAX_VOXELS = 2**18  # statistics drawn in the report (display ranges, normalisation fits, ranks, joint
# histograms) read at most this many voxels: a quarter of a million settle a picture's grey levels; sorting a
# million took 0.2 s of a 2 mm brain's report, the full-volume percentiles and fits 0.8 s of a 1 mm brain's


def _every_nth(a):
    """``a``'s every n-th voxel along each axis, flattened: about FIGURE_MAX_VOXELS of them at most (the same
    voxels for arrays of one shape; a flat stride through a 256^3 grid read the same 4 columns x = 0, 64, ...)."""
    a = np.asarray(a)
    step = 1 if a.size <= FIGURE_MAX_VOXELS else math.ceil((a.size / FIGURE_MAX_VOXELS) ** (1.0 / a.ndim) - 1e-9)
    return a[(slice(None, None, step),) * a.ndim].ravel()


RANK_TIE = 1e-4  # values closer than this share of the image's 1st-99th percentile span count as one value when ranked


def _ranker(a):
    """Function of values of ``a``: their average rank in ``a`` (in every n-th voxel of a large image),
    scaled to [0, 1] (scipy's rankdata, 'average'), values within RANK_TIE of the 1st-99th percentile span
    counted as tied: an interpolated constant background (c + 1e-5) would otherwise rank far from c's block
    of ties. (The span, not the range: one far outlier would make every value a tie.)"""
    srt = np.sort(_every_nth(a))
    scale = max(srt.size - 1, 1)
    lo, hi = srt[int(0.01 * scale)], srt[int(0.99 * scale)]
    eps = RANK_TIE * float(hi - lo if hi > lo else srt[-1] - srt[0])

    def ranks(v):
        left, right = np.searchsorted(srt, v - eps, "left"), np.searchsorted(srt, v + eps, "right")
        return (left + right - 1) / 2.0 / scale

    return ranks


def _rank_diff(fixed, moving, rank_fixed=None):
    """|rank(fixed) - rank(moving)| in [0, 1], a modality-agnostic (monotone) difference, as a function of a view.

    Ranks are over the whole images; only the views' voxels are looked up. ``rank_fixed``: ``_ranker(fixed)``."""
    rf, rm = rank_fixed or _ranker(fixed), _ranker(moving)
    return lambda v: np.abs(rf(v.take(fixed)) - rm(v.take(moving)))


def field_of_view(result):
    """Boolean map on the fixed grid: where the field lands inside the moving image (``result.fov``,
    :func:`priorreg.resample.field_of_view`); None for a result without its moving image."""
    return None if result.fov is None else np.asarray(result.fov, dtype=bool)


def percent_outside(fov) -> float | None:
    """Percentage of the fixed grid outside the moving image's field of view."""
    return None if fov is None else float(100.0 * (1.0 - np.mean(fov)))


def _joint_histogram(f, m, ranges, bins, sigma, mask=None):
    # The engine's Parzen table (float64, CPU): the histogram the registration optimised
    # (of every n-th voxel on large images).
    import torch

    from . import histogram as hist

    x = torch.as_tensor(_every_nth(f).astype(np.float64))
    y = torch.as_tensor(_every_nth(m).astype(np.float64))
    w = None if mask is None else torch.as_tensor((_every_nth(mask) > 0).astype(np.float64))
    P = hist.parzen_joint_histogram(x, y, ranges, hist.smoothing_matrix(bins, sigma), w)
    return P.numpy()


class _Data:
    """What the panels read, computed once per report, each item on first use."""

    def __init__(self, result, prior=None, mask=None, fov=None):
        self.result, self.prior, self.mask = result, prior, mask
        fix = result.fixed
        self.spacing = fix.spacing
        self.fixed = np.asarray(fix.array, float)
        self.after = np.asarray(result.warped.array, float)
        before = _before_image(result)
        self.before = self.after if before is None else np.asarray(before.array, float)
        self.fov = field_of_view(result) if fov is None else fov
        self.views = _views(fix, None if fix.ndim == 2 else _anatomy_centre(self.fixed, self.fov))

    @cached_property
    def moving_range(self):
        """The display range shared by the moving images (before, after, after the linear stage)."""
        return _display_range(np.concatenate([_every_nth(self.before), _every_nth(self.after)]))

    @cached_property
    def scaled(self):
        """(fixed, before, after) scaled to [0, 1] for display, each a function of a view (scaling a 1 mm
        volume whole took 0.35 s of its report); moving ones share one range."""
        def on_views(a, rng, fov=None):
            return lambda v: _scaled(v.take(a), rng) * (1 if fov is None else v.take(fov))

        r_m = self.moving_range
        return (on_views(self.fixed, _display_range(self.fixed)), on_views(self.before, r_m, self.before_fov),
                on_views(self.after, r_m, self.fov))

    @cached_property
    def before_fov(self):
        """Where the moving image has data on the fixed grid before registration (None: everywhere). The
        moving pictures are black outside their field of view: the fill there (0) showed grey where the
        moving image's background is negative (a CT at -1000 HU), as if it were data."""
        r = self.result
        if getattr(r, "moving", None) is None or r.fixed.same_grid(r.moving):
            return None
        from .resample import field_of_view as fov_of

        return fov_of(r.moving, r.fixed, None)

    @cached_property
    def even_tiles(self):
        return _even_tiles(self.fixed.shape, self.spacing)

    @cached_property
    def normal_maps(self):
        """(fixed map, moving map): functions of values normalising them as the registration did; before and
        after share the one map fitted to the moving image (fitted to each, the warp's fill outside the field
        of view moved the after image's percentiles, and "after - before" showed an offset where nothing
        changed). Each is fitted on every n-th voxel and applied to the voxels shown or sampled only (a
        picture needs no more: fits and maps over the whole grid took 0.5 s of a 1 mm brain's report)."""
        norm, mov = self.result.normalization, getattr(self.result, "moving", None)
        moving = self.before if mov is None else mov.array
        return normalizer(_every_nth(self.fixed), norm), normalizer(_every_nth(moving), norm)

    @cached_property
    def linear_only(self):
        """The moving image through the linear stage alone, scaled like ``scaled``'s moving images:
        a function of a view, computed on that view's voxels only (black outside the moving image)."""
        import torch
        from scipy.ndimage import map_coordinates

        from .resample import inside as in_image

        r = self.result
        (Mf, of), (Mm, om) = r.fixed.index_to_world(), r.moving.index_to_world()
        B = np.linalg.solve(Mm, r.linear.matrix @ Mf)  # fixed voxel index -> moving voxel index
        c = np.linalg.solve(Mm, r.linear.matrix @ of + r.linear.translation - om)
        moving = np.asarray(r.moving.array, float)

        def at(v):
            axes = [np.arange(n)[k] for n, k in zip(r.fixed.shape, v.sl)]  # an index or a whole axis
            grid = np.stack(np.meshgrid(*axes, indexing="ij"))
            idx = B @ grid.reshape(len(axes), -1) + c[:, None]
            inside = in_image(torch.as_tensor(idx), moving.shape).numpy()  # as ITK counts it, as the warp does
            view = _scaled(map_coordinates(moving, idx, order=1, mode="nearest"), self.moving_range) * inside
            view = view.reshape([n for n, a in zip(grid.shape[1:], axes) if np.ndim(a)])
            return view.T if v.transposed else view

        return at

    @property
    def fov_outline(self):
        """The field of view to outline, or None when it covers the whole fixed grid."""
        return None if self.fov is None or self.fov.all() else self.fov


def _before_image(result):
    """The moving image on the fixed grid before registration (zero field), or None."""
    return result.moving_on_fixed


def _at(a, v):
    """The view ``v`` of ``a``: an array on the fixed grid, or a function of the view."""
    return a(v) if callable(a) else v.take(a)


def _grid(d, columns) -> str:
    """HTML: a header per column, then one row of pictures per view (named above it in 3D), then the colour bars.

    ``columns``: [(label, draw(view, display shape) -> RGB, colour bar HTML or "")]."""
    cells = [f"<div class='head'>{html.escape(label)}</div>" for label, _, _ in columns]
    for v in d.views:
        if v.title:
            cells.append(f"<div class='row'>{html.escape(v.title)}</div>")
        size = pic.display_shape(v.take(d.fixed).shape, v.aspect)
        cells += [f"<div>{pic.img_tag(draw(v, size), f'{label} {v.title}'.strip())}</div>"
                  for label, draw, _ in columns]
    if any(bar for _, _, bar in columns):
        cells += [f"<div>{bar}</div>" for _, _, bar in columns]
    return _cells(len(columns), cells)


def _cells(ncols: int, cells) -> str:
    return f"<div class='grid' style='grid-template-columns:repeat({ncols},minmax(0,1fr))'>{''.join(cells)}</div>"


def _show(a, table=pic.GREY, lo=0.0, hi=1.0, overlay=None, outline=None, blank=None):
    """draw(view, size): ``a`` (``lo`` .. ``hi`` over ``table``), optionally NO_DATA_RGB where ``blank`` (no
    moving-image data), with a red mask overlay and a field-of-view outline."""
    def draw(v, size):
        rgb = pic.colour(_at(a, v), lo, hi, table)
        if blank is not None:
            rgb = pic.paint(rgb, v.take(blank), NO_DATA_RGB)
        if overlay is not None:
            rgb = pic.paint(rgb, v.take(overlay), EDGE_RGB, 0.9)
        rgb = pic.enlarge(rgb, size)
        if outline is not None:  # drawn at display size: a thin line
            rgb = pic.paint(rgb, pic.outline(pic.enlarge(v.take(outline), size)), FOV_RGB)
        return rgb

    return draw


def _fov_caption(d) -> str:
    if d.fov_outline is None:
        return ""
    return (f" Cyan line (after): the moving image's field of view on the fixed grid; "
            f"{percent_outside(d.fov):.1f}% of the fixed grid lies outside it, where the warped image is 0 "
            "(the moving pictures are black outside the moving image).")


def panel_checkerboard(d):
    """Before and after registration; where a linear stage ran (or an initial transform was used), the moving
    image after it alone sits between them (one "before" picture: a panel of its own repeated it)."""
    fs, bs, as_ = d.scaled
    linear, said = _linear_column(d)
    middle = [] if linear is None else [linear]
    return (
        "Checkerboard: fixed / moving",
        "Alternating tiles of the fixed image and the moving image, before and after registration. "
        "After registration, structures should continue smoothly across tile borders." + said + _fov_caption(d),
        _grid(d, [("before", _show(_checkerboard(d, fs, bs)), ""), *middle,
                  ("after" if linear is None else "after registration",
                   _show(_checkerboard(d, fs, as_), outline=d.fov_outline), "")]),
    )


def _linear_column(d) -> tuple:
    """(the checkerboard column of the moving image through the linear transform alone, or None where there is
    none, or no moving image to draw through it; the caption's sentences on it)."""
    lin = getattr(d.result, "linear", None)
    if lin is None or getattr(d.result, "moving", None) is None:
        return None, ""
    fs = d.scaled[0]
    said = "".join(f" {n[0].upper()}{n[1:]}." for n in lin.notes)  # e.g. its optimum rejected, world alignment kept
    name = _linear_name(d.result)
    after = f"the {lin.kind} stage" if name == "linear stage" else f"the initial transform ({lin.kind})"
    numbers = " (its rotation, translation, scales and shears are in the summary)" if not lin.rejected else ""
    return ((f"after {after}", _show(_checkerboard(d, fs, d.linear_only)), ""),
            f" Middle: after {after} alone{numbers}, before the deformable stage; before: at world alignment.{said}")


def panel_edges(d):
    _, bs, as_ = d.scaled
    edges = _edges(d.fixed, d.spacing)
    return (
        "Fixed-image edges over the moving image",
        "Red: strong edges of the fixed image drawn over the moving image, before and after registration. "
        "After registration the red contours should follow the moving image's own boundaries." + _fov_caption(d),
        _grid(d, [("before", _show(bs, overlay=edges), ""),
                  ("after", _show(as_, overlay=edges, outline=d.fov_outline), "")]),
    )


def panel_differences(d):
    mm = d.normal_maps[1]
    rf = _ranker(d.fixed)
    ranked = dict(table=pic.SEQUENTIAL, lo=0.0, hi=0.5)
    bar = pic.colour_bar(pic.SEQUENTIAL, ["0", "0.25", "\u2265 0.5"])
    return (
        "Difference images",
        "Left: warped moving minus moving (normalised intensities): where the registration moved intensity "
        "(red: brighter after, blue: darker after). "
        "Right: |fixed - warped| after a rank (histogram) matching of the moving image to the fixed one, before "
        "and after: for multi-modal pairs read it with care; it should shrink where anatomy matches. Grey: no "
        "moving-image data there (outside its field of view), where a difference would be the warp's fill.",
        _grid(d, [("after - before", _show(lambda v: mm(v.take(d.after)) - mm(v.take(d.before)), pic.DIVERGING, -0.5, 0.5,
                                           blank=_no_data(d.before_fov, d.fov)),
                   pic.colour_bar(pic.DIVERGING, ["\u2264 -0.5", "0", "\u2265 0.5"])),
                  ("|fixed - moving| (ranked), before", _show(_rank_diff(d.fixed, d.before, rf), **ranked,
                                                              blank=_no_data(d.before_fov)), bar),
                  ("|fixed - moving| (ranked), after", _show(_rank_diff(d.fixed, d.after, rf), **ranked,
                                                             blank=_no_data(d.fov)), bar)]),
    )


def _no_data(*fovs):
    """Where any of the fields of view ``fovs`` (None: everywhere) leaves the moving image without data, or
    None where none does."""
    inside = [f for f in fovs if f is not None and not f.all()]
    return None if not inside else ~np.logical_and.reduce(inside)


def _warped_lines(u_rows, u_cols, size) -> np.ndarray:
    """Every few rows and columns of a view's grid, displaced by (u_rows, u_cols) voxels, in display pixels:
    [row lines, column lines], arrays of shape (lines, points, 2) for :func:`pictures.draw_lines`."""
    h, w = u_rows.shape
    R, C = np.indices((h, w), dtype=float)
    Y = (R + u_rows + 0.5) * (size[0] / h) - 0.5  # voxel centres to display pixel centres
    X = (C + u_cols + 0.5) * (size[1] / w) - 0.5
    step = max(2, max(h, w) // 24)
    rows, cols = np.stack([Y[::step], X[::step]], -1), np.stack([Y[:, ::step].T, X[:, ::step].T], -1)
    return [rows, cols]


def _draw_grid_lines(d):
    """draw(view, size): the fixed grid's lines displaced by the field (in voxels), over the dimmed warped image."""
    as_ = d.scaled[2]
    field = np.asarray(d.result.field)

    def draw(v, size):
        rgb = pic.enlarge(pic.colour(_at(as_, v), 0.0, 1.0 / 0.7, pic.GREY), size)  # dimmed: the lines stand out
        r, c = v.axes
        sign = [-1.0 if f else 1.0 for f in v.flips]  # a flipped axis shows its displacements reversed
        for lines in _warped_lines(sign[0] * v.take(field[r]) / d.spacing[r], sign[1] * v.take(field[c]) / d.spacing[c], size):
            rgb = pic.draw_lines(rgb, lines, GRID_RGB)
        return rgb

    return draw


def _draw_jacobian(d):
    """(draw(view, size), colour bar): det(I + grad u) on a blue-white-red scale, white at 1, folding (<= 0)
    in black."""
    jac = np.asarray(d.result.jacobian, float)
    jmax = max(2.0, float(np.percentile(jac, 99.5)))

    def draw(v, size):
        j = v.take(jac)
        t = np.where(j <= 1, 0.5 * j, 0.5 + 0.5 * (j - 1) / (jmax - 1))  # two slopes: 0 .. 1 .. jmax
        return pic.enlarge(pic.paint(pic.colour(t, 0.0, 1.0, pic.DIVERGING), j <= 0, (0, 0, 0)), size)

    return draw, pic.colour_bar(pic.DIVERGING, ["0", "1", f"\u2265 {jmax:.3g}"])


def panel_deformation(d):
    js = d.result.jacobian_stats
    return (
        "Deformation",
        "Left: the fixed grid's lines (yellow) mapped through the pull-back field (where each fixed point samples the "
        "moving image), over the warped image. Right: Jacobian determinant det(I + grad u): white = 1 (volume kept), "
        "blue < 1 (shrinking), red > 1 (growing), black = folding (<= 0). "
        f"min {js['min']:.3f}, max {js['max']:.3f}, {js['percent_nonpositive']:.3f}% of voxels <= 0.",
        _grid(d, [("deformation grid", _draw_grid_lines(d), ""), ("Jacobian determinant", *_draw_jacobian(d))]),
    )


def _histograms(d) -> list:
    """[(table, title)]: observed before and after (as the prior term saw the pair), and the prior."""
    r, o = d.result, d.result.options
    fm, mm = d.normal_maps  # on the voxels the tables read (_joint_histogram's every n-th)
    fn, bn, an = fm(_every_nth(d.fixed)), mm(_every_nth(d.before)), mm(_every_nth(d.after))
    maps = [m for m in ((r.prior or {}).get("intensity_maps") or []) if m.get("level") == 0]
    if maps:  # the fitted gain/offset per modality
        (af, bf), (am, bm) = maps[0]["fixed"], maps[0]["moving"]
        fn, bn, an = af * fn + bf, am * bn + bm, am * an + bm
    inside = None if d.fov is None or d.fov.all() else d.fov.astype(float)  # no zeros from outside the moving image
    sample = inside if d.mask is None else (d.mask if inside is None else (np.asarray(d.mask) > 0) * inside)
    sample = None if sample is None else _every_nth(sample)
    out = [(_joint_histogram(fn, m, r.ranges, o.bins, o.parzen_sigma, sample), t)
           for m, t in ((bn, "observed, before"), (an, "observed, after"))]
    if d.prior is not None:
        out.append((d.prior.global_table(0), f"learned prior p_L ({d.prior.n_pairs} pair(s))"))
    return out


def panel_histograms(d):
    hists, (rf, rm) = _histograms(d), d.result.ranges
    logs = [np.log10(np.asarray(H, float).T[::-1] + 1e-7) for H, _ in hists]  # moving intensity upwards
    top = max(-6.0, max(float(L.max()) for L in logs))
    axes = (f"<div class='ax'>&rarr; fixed intensity (normalised) {rf[0]:.3g} .. {rf[1]:.3g}<br>"
            f"&uarr; moving intensity (normalised) {rm[0]:.3g} .. {rm[1]:.3g}</div>")
    cells = [f"<div class='head'>{html.escape(t)}</div>" for _, t in hists]
    shown = [pic.enlarge(pic.colour(L, -7.0, top, pic.SEQUENTIAL), pic.display_shape(L.shape, 1.0)) for L in logs]
    cells += [f"<div>{pic.img_tag(rgb, t)}{axes}</div>" for rgb, (_, t) in zip(shown, hists)]
    cells += [f"<div>{pic.colour_bar(pic.SEQUENTIAL, ['-7', f'{(top - 7) / 2:.2g}', f'{top:.2g}'])}</div>"]
    return (
        "Joint intensity histograms",
        "log10 of the Parzen joint histogram of fixed and moving intensities before and after registration"
        + (", next to the learned prior p_L (finest level)." if d.prior is not None
           else " (no learned prior: alpha = 1, mutual information alone).")
        + " One colour scale for all. Sharper, more compact clusters mean better alignment.",
        _cells(len(hists), cells),
    )


def _energy_series(history):
    """([total energy per level], [each term], level starts): (x, y, colour, label) per line, levels one
    after another."""
    start, keys, total, terms, starts, labelled = 0, [], [], [], [], set()
    for i, h in enumerate(history):
        e, x = np.asarray(h.energy, float), start + np.arange(len(h.energy))
        total.append((x, e, pic.PALETTE[i % 10], f"{level_label(h.level, len(history))} ({'x'.join(str(s) for s in h.shape[::-1])})"))
        keys += [k for k in dict.fromkeys(k for t in h.terms for k in t) if k not in keys]
        for j, k in enumerate(keys):
            vals = np.array([t.get(k, np.nan) for t in h.terms], float)
            terms.append((start + np.arange(len(vals)), vals, pic.PALETTE[j % 10], k if k not in labelled else None))
            labelled.add(k)
        starts.append(start)
        start += len(e)
    return total, terms, starts[1:]


def panel_energy(d):
    total, terms, starts = _energy_series(d.result.history)
    xlabel = "accepted iteration (all levels; dashed: next level)"
    plots = [pic.svg_plot(total, title="energy J, coarse to fine", xlabel=xlabel, vlines=starts),
             pic.svg_plot(terms, title="energy terms", xlabel=xlabel, vlines=starts)]
    return ("Energy", "J = alpha*(similarity (global MI, regional MI by local_weight) + mind_weight*MIND) + "
            "(1-alpha)*prior term (KL, CE or cKL to p_L) + "
            "regulariser (membrane and bending), per accepted iteration and pyramid level (the similarity and prior "
            "terms in nats); the right plot draws each term before its weight.",
            _cells(2, [f"<div>{p}</div>" for p in plots]))


PANELS = (panel_checkerboard, panel_edges, panel_differences, panel_deformation, panel_histograms,
          panel_energy)


def figures(result, prior=None, mask=None, fov=None) -> list:
    """[(section title, caption, HTML body)] for the HTML report, one per entry of :data:`PANELS` that applies.

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
.grid{display:grid;gap:.3em .8em;align-items:start;margin:.5em 0} .grid img{display:block}
.head{font-weight:600;font-size:.9em} .row{grid-column:1/-1;font-size:.85em;color:#555;margin-top:.4em}
.bar{max-width:260px} .bar img{width:100%;height:10px} .ticks{display:flex;justify-content:space-between;font-size:.8em}
.ax{font-size:.8em;color:#555}
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
    preset = getattr(result, "preset", None)
    rows = [
        ("preset", "none (options given)" if preset is None else preset),
        ("run time", f"{result.seconds:.1f} s"),
        ("final energy", f"{result.final_energy:.6g}"),
        ("Jacobian min / max", f"{js['min']:.3f} / {js['max']:.3f}"),
        ("voxels folding (Jacobian <= 0)", f"{js['percent_nonpositive']:.3f}%"),
        ("fixed grid outside the moving field of view", "n/a" if out is None else f"{out:.1f}%"),
        *_linear_rows(result.linear_in_files(), _linear_name(result), _slice_gap(result)),
        *_alpha_rows(getattr(result, "prior_weights", None) or [], len(result.history)),
    ]
    return ["<h2>Summary</h2>", _table(rows)]


def _alpha_rows(weights, levels: int) -> list:
    """alpha="auto": per level, the alpha chosen and why."""
    return [(f"alpha at {level_label(w['level'], levels)} (auto)", f"{w['alpha']:.2f}: {w.get('reason') or w.get('note') or ''}")
            for w in weights]


def _linear_name(result) -> str:
    """What the linear transform is: the stage's result, or (``--linear none``) the initial transform as given."""
    options = getattr(result, "options", None)
    return "initial transform" if options is not None and options.linear == "none" else "linear stage"


def _slice_gap(result) -> str:
    """' (5 mm of it along world x: ...)' where two single slices lie in parallel planes apart: the 3D transform
    (linear.tfm) carries that distance, which the 2D registration did not find."""
    gap = result.plane_gap
    return f" ({gap:.3g} mm of it along world {'xyz'[result.fixed.volume.drop]}: the distance between the slices' planes)" if gap else ""


def _linear_rows(lin, name: str = "linear stage", gap: str = "") -> list:
    """The linear transform, as a reader checks it: degrees, mm, scales, shears (``name``: :func:`_linear_name`;
    ``gap``: :func:`_slice_gap`)."""
    if lin is None:
        return []
    if lin.rejected:  # what is kept is the start, not a transform the stage found
        return [(f"{name} ({lin.kind})", "not kept: " + "; ".join(lin.notes))]

    def nums(xs, unit=""):
        return ", ".join(f"{x + 0.0:.2f}{unit}" for x in np.round(xs, 2))  # (+ 0.0: no "-0.00")

    turn = (f"{nums(lin.rotation_degrees, ' deg')}" if len(lin.rotation_degrees) == 1 else  # 2D: one signed angle
            f"{rotation_angle(lin.matrix):.2f} deg in all (the angles of R in A = R S (I + H): "
            f"{nums(lin.rotation_degrees, ' deg')})")
    return [
        (f"{name} ({lin.kind}): rotation", turn),
        (f"{name}: translation (world LPS)", nums(lin.translation_mm, " mm") + gap),
        (f"{name}: scales / shears", f"{nums(lin.scales)} / {nums(lin.shears)}"),
    ]


def _inputs(report: dict) -> list:
    in_rows = [(role, info.get("path", "")) for role, info in report.get("inputs", {}).items()]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("input_notes", ()))
    geo_rows = [(role, *_grid_cells(g)) for role, g in report.get("geometry", {}).items()]
    return [
        "<h2>Inputs</h2>",
        _table(in_rows, ["role", "path"]) if in_rows else "",
        f"<ul>{notes}</ul>" if notes else "",
        _table(geo_rows, ["image", "size (i x j x k, as in 3D Slicer)", "spacing mm (i, j, k)", "origin mm (LPS)"]),
    ]


def _grid_cells(g: dict) -> tuple:
    """(size, spacing, origin) as 3D Slicer shows the file: a single slice's 3D grid, not its 2D plane."""
    f = g.get("file_grid")
    size, spacing = (f["shape"][::-1], f["spacing_mm"][::-1]) if f else (g["itk"]["size"], g["itk"]["spacing_mm"])
    origin = f["origin_mm"] if f else g["origin_mm"]
    return "x".join(str(n) for n in size), ", ".join(f"{s:.4g}" for s in spacing), ", ".join(f"{o:.4g}" for o in origin)


def _figure(title, caption, body) -> str:
    return f"<h2>{html.escape(title)}</h2>\n<p class='cap'>{html.escape(caption)}</p>\n{body}"


def _tail(result, report: dict) -> list:
    """Pyramid levels, options, software versions and the field convention."""
    lvl_rows = [
        (level_number(h.level, len(result.history)), "x".join(str(s) for s in h.shape[::-1]), h.iterations, h.stop_reason,
         f"{h.setup_seconds:.2f} + {h.seconds:.2f}",
         f"{h.bending_mm2():.4g}", f"{h.energy[0]:.6g}" if h.energy else "", f"{h.energy[-1]:.6g}" if h.energy else "")
        for h in result.history
    ]
    return [
        "<h2>Pyramid levels</h2>",
        "<p class='cap'>bending as used: the option's weight after its rule (bending_scale), times alpha where the "
        "regulariser is scaled by it, divided by the share of the grid sampled (a mask's, or the moving image's field of view's where it misses "
        "part of the fixed anatomy; levels[].regulariser.sampled_share in report.json), and times nearly_aligned_stiffness on "
        "the finest level of a nearly aligned pair (docs/options.md).</p>",
        _table(lvl_rows, ["level (coarse first)", "size (i x j x k)", "iterations", "stop reason", "seconds (set-up + iterations)",
                          "bending (mm^2, as used)", "J start", "J end"]),
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
    """The self-contained HTML page (pictures embedded as base64 PNG, plots as inline SVG)."""
    fov = field_of_view(result)
    figs = [_figure(*f) for f in figures(result, prior, mask, fov)]
    parts = [*_head(result, report), extra_html, *_summary(result, fov), *_inputs(report), *figs,
             *_tail(result, report)]
    return "\n".join(parts)


def write_html(path, result, report: dict, prior=None, mask=None, extra_html: str = "") -> None:
    """Write the HTML report atomically."""
    pio.write_bytes(path, render_html(result, report, prior, mask, extra_html).encode("utf-8"))
