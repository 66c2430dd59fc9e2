"""Learned joint-intensity priors p_L (docs/method.md §3): fit, save, load, check."""
from __future__ import annotations

import io as _io
import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import histogram as hist
from . import pyramid
from .energy import HistogramSpec, JointHistogramEnergy
from .errors import PriorRegError, PriorRegWarning
from .image import (as_image, as_mask, check_training_pair, fields_equal, level_factors, on_one_grid,
                    spacing_or_isotropic, with_margin)
from .intensity import NORMALIZATIONS, intensity_range, normalize
from .io import atomic_path
from .options import RegistrationOptions, preset_options
from .pair_shift import misalignment_note
from .prior_weight import leave_one_out_kl

FORMAT = "priorreg-prior"
FORMAT_VERSION = 2  # 2: per-region tables (levels, R, B, B); version 1 files (global tables) still load


@dataclass(eq=False)
class Prior:
    """A learned joint density: B x B tables per pyramid level and per region.

    ``tables[l, r]`` is the mean over the training pairs of their normalised,
    Parzen-smoothed joint histograms at level l inside region r of the field of
    view (unfloored; the floor eta is a registration option). A *global* prior
    (the paper's) has one region. A *regional* prior cuts the field of view into
    ``regions[k]`` blocks along axis k and learns where each intensity pair occurs,
    which a global histogram cannot (docs/method.md §9.2); it assumes the training pairs
    and the test pair share a frame (atlas space, one scanner's field of view).
    ``region_mass[l, r]`` is the mean fraction of the training samples in region r.
    Everything needed to use it the way it was learned is stored with it.
    """

    tables: np.ndarray  # (levels, R, B, B), each table sums to 1
    bins: int
    parzen_sigma: float
    ranges: tuple  # ((lo_fixed, hi_fixed), (lo_moving, hi_moving)) in normalised units
    normalization: str
    dim: int
    levels: int
    n_pairs: int
    regions: tuple = ()
    region_mass: np.ndarray | None = None  # (levels, R)
    # (levels, n_pairs): each training pair's KL to the mean of the others (leave-one-out, nats),
    # the prior's spread beyond its mean (alpha="auto", priorreg.prior_weight). None: a file
    # written before it was stored; NaN: a prior from one pair.
    pair_kl: np.ndarray | None = None
    version: int = FORMAT_VERSION
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.regions:
            self.regions = (1,) * self.dim
        self.regions = tuple(int(r) for r in self.regions)
        if self.tables.ndim == 3:  # a global prior given as (levels, B, B)
            self.tables = self.tables[:, None]
        if self.region_mass is None:
            self.region_mass = np.full(self.tables.shape[:2], 1.0 / self.tables.shape[1])

    def __repr__(self) -> str:  # the dataclass's own printed every table
        regions = "" if self.n_regions == 1 else f", regions={'x'.join(map(str, self.regions))}"
        return (f"Prior({self.dim}D, {self.n_pairs} pair(s), bins={self.bins}, parzen_sigma={self.parzen_sigma:g}, "
                f"levels={self.levels}{regions}, normalization={self.normalization!r})")

    @property
    def n_regions(self) -> int:
        return int(np.prod(self.regions))

    def global_table(self, level: int) -> np.ndarray:
        """The B x B table of all samples at ``level`` (the regions' tables weighted by their mass)."""
        return np.tensordot(self.region_mass[level], self.tables[level], axes=1)

    def floored(self, level: int, eta: float) -> np.ndarray:
        """Q~ = (Q + eta) / (1 + B^2 eta) per region: (R, B, B)."""
        return hist.floor_prior(self.tables[level], eta)

    def __eq__(self, other) -> bool:
        """The same tables and settings (a saved and loaded prior equals the one saved)."""
        return fields_equal(self, other)

    __hash__ = None

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "bins": self.bins,
            "parzen_sigma": self.parzen_sigma,
            "ranges": [list(r) for r in self.ranges],
            "normalization": self.normalization,
            "dim": self.dim,
            "levels": self.levels,
            "n_pairs": self.n_pairs,
            "regions": list(self.regions),
            "notes": self.notes,
        }

    def save(self, path) -> None:
        """Write one .npz file at exactly ``path``, atomically."""
        path = os.fspath(path)
        buf = _io.BytesIO()
        arrays = dict(tables=self.tables, region_mass=self.region_mass, meta=np.array(json.dumps(self.metadata())))
        if self.pair_kl is not None:
            arrays["pair_kl"] = np.asarray(self.pair_kl, dtype=np.float64)
        np.savez_compressed(buf, **arrays)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise PriorRegError(f"Prior.save(): cannot write {path}: the folder {directory} does not exist")
        if os.path.isdir(path):
            raise PriorRegError(f"Prior.save(): {path} is a folder; give the file to write (e.g. {os.path.join(path, 'prior.npz')})")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # the mode of any file the user writes (umask)
            fh.write(buf.getvalue())

    @classmethod
    def load(cls, path) -> "Prior":
        """The prior in a .npz file written by :meth:`save`; a file that is not one, or is damaged, is refused."""
        path = os.fspath(path)
        tables, mass, pair_kl, meta = _read_npz(path)
        try:
            B, L, dim, n_pairs = int(meta["bins"]), int(meta["levels"]), int(meta["dim"]), int(meta["n_pairs"])
            regions = tuple(int(r) for r in meta.get("regions", [1] * dim))
            ranges = tuple(tuple(float(v) for v in r) for r in meta["ranges"])
            sigma, normalization = float(meta["parzen_sigma"]), meta["normalization"]
        except (KeyError, TypeError, ValueError):
            raise PriorRegError(f"Prior.load(): {path} is corrupt (its metadata lacks or garbles a field)") from None
        bad = _bad_metadata(dim, n_pairs, ranges, sigma, normalization, regions)
        if bad:
            raise PriorRegError(f"Prior.load(): {path} is corrupt ({bad})")
        R = int(np.prod(regions))
        if tables.ndim == 3:
            tables = tables[:, None]
        if pair_kl is not None and pair_kl.shape != (L, n_pairs):
            pair_kl = None  # unreadable spread: alpha="auto" falls back as for a file without it
        if tables.shape != (L, R, B, B) or (mass is not None and mass.shape != (L, R)) or len(regions) != dim:
            raise PriorRegError(f"Prior.load(): {path} is corrupt (tables of shape {tables.shape}, regions {list(regions)})")
        if not np.all(np.isfinite(tables)) or tables.min() < 0 or (mass is not None and not np.all(np.isfinite(mass))):
            raise PriorRegError(f"Prior.load(): {path} is corrupt (its tables hold NaN, Inf or negative values)")
        sums = tables.sum(axis=(-2, -1))
        if np.abs(sums - 1).max() > 1e-3:  # an all-zero table was taken, and only the KL warning hinted at it
            raise PriorRegError(f"Prior.load(): {path} is corrupt (a joint table sums to {sums.flat[np.abs(sums - 1).argmax()]:.4g}, "
                                "not 1: each is a probability table)")
        return cls(tables=tables, bins=B, parzen_sigma=sigma, ranges=ranges, normalization=normalization, dim=dim,
                   levels=L, n_pairs=n_pairs, regions=regions, region_mass=mass, pair_kl=pair_kl,
                   notes=meta.get("notes", {}))

    def check_dim(self, dim: int, func: str = "register()", images: str = "", learn: str = "fit_prior",
                  without: str = "register without it") -> None:
        """Refuse a prior learned on images of another dimension (the one wording of the API and the command line;
        ``images`` names the images, ``learn`` and ``without`` the remedies)."""
        if dim != self.dim:
            raise PriorRegError(f"{func}: the prior was learned on {self.dim}D images but {images or 'the images'} "
                                f"{'is' if images else 'are'} {dim}D; learn one from {dim}D pairs ({learn}) or {without}")

    def check_compatible(self, dim: int, opts: RegistrationOptions, func: str = "register()") -> None:
        """Refuse a prior learned for another dimension or binning (a pyramid of more levels than its
        tables runs its coarser levels without it)."""
        self.check_dim(dim, func)
        if opts.bins != self.bins:
            raise PriorRegError(
                f"{func}: the prior was learned with bins={self.bins} but registration asks bins={opts.bins}; "
                f"use bins={self.bins} or train a new prior"
            )
        if abs(opts.parzen_sigma - self.parzen_sigma) > 1e-12:
            raise PriorRegError(
                f"{func}: the prior was learned with parzen_sigma={self.parzen_sigma} but registration asks "
                f"parzen_sigma={opts.parzen_sigma}; use the prior's value or train a new prior"
            )


def fit_prior(
    fixed,
    moving,
    *,
    masks=None,
    bins: int | None = None,
    parzen_sigma: float | None = None,
    levels: int | None = None,
    normalization: str | None = None,
    spacing=None,
    regions=1,
) -> Prior:
    """Learn p_L from n >= 1 pre-registered (fixed-modality, moving-modality) pairs.

    Parameters
    ----------
    fixed, moving : sequence of arrays or :class:`Image`, or a single one each
        Aligned training pairs; ``fixed[j]`` and ``moving[j]`` share one grid.
        "fixed" is the modality of the reference image at registration time.
    masks : optional sequence of masks (one per pair) limiting the samples, grown by the 2 mm margin
        ``register()`` gives its mask (``image.with_margin``), so that both sample the same kind of region.
    bins, parzen_sigma, levels, normalization : as in :class:`RegistrationOptions`; those not given are the
        "default" preset's for the images' dimension, which ``register()`` uses (3D: 32 bins, Parzen sigma 1),
        as ``priorreg train`` takes them.
    regions : int or sequence of int
        1 (default): one global table per level, the paper's prior. ``k`` or
        ``(k1, k2[, k3])``: cut the field of view into that many equal blocks per
        axis and learn one table per block, so the prior also says *where* each
        intensity pair occurs. Only meaningful when training and test images share
        a frame (same field of view / atlas space); blocks are placed by relative
        position, so grids of another size map onto the same blocks.

    Notes
    -----
    Each pair is normalised with the same recipe as at registration time,
    ranges are pooled over all pairs (robust percentiles + margin), and each
    level's table is the equal-weight mean of the pairs' smoothed histograms of
    images downsampled by the registration pyramid's operator.
    """
    func = "fit_prior()"
    fixed, moving, masks = _pair_lists(fixed, moving, masks, func)
    preset = preset_options("default", as_image(fixed[0], "fixed[0]", func, spacing).ndim)
    given = dict(bins=bins, parzen_sigma=parzen_sigma, levels=levels, normalization=normalization)
    try:  # validates them (and takes 32.0 as 32)
        checked = preset.replace(**{k: v for k, v in given.items() if v is not None})
    except PriorRegError as e:
        raise PriorRegError(str(e).replace("register()", func, 1)) from None
    bins, parzen_sigma, levels, normalization = checked.bins, checked.parzen_sigma, checked.levels, checked.normalization
    pairs = _training_pairs(fixed, moving, masks, spacing, normalization, levels, func)
    misaligned = []  # kept with the prior: register() says it again where the prior is used
    for j, (fi, f_n, m_n, mk) in enumerate(pairs):
        note = misalignment_note(f_n, m_n, fi.spacing, f"{func}: training pair {j}", mk)
        if note:
            warnings.warn(note, PriorRegWarning, stacklevel=2)
            misaligned.append(j)
    dim = pairs[0][0].ndim
    regs = check_regions(regions, dim, [p[0].shape for p in pairs], levels, func, spacings=[p[0].spacing for p in pairs])
    frame = _regional_frame(regs, [p[0] for p in pairs], func)
    ranges = (intensity_range([p[1] for p in pairs]), intensity_range([p[2] for p in pairs]))
    tables, mass, per_pair = _pooled_tables(pairs, HistogramSpec(bins, parzen_sigma, ranges), regs, levels)
    pair_kl = np.stack([leave_one_out_kl(per_pair[lv], RegistrationOptions.prior_floor) for lv in range(levels)])
    notes = {"masked": True} if any(p[3] is not None for p in pairs) else {}  # register() says so if used without
    if misaligned:
        notes["misaligned_pairs"] = misaligned
    if frame is not None:
        notes["extent_mm"] = frame  # register() says so where the fixed image's differs
    return Prior(tables, bins, float(parzen_sigma), ranges, normalization, dim, levels, len(pairs), regs, mass, pair_kl,
                 notes=notes)


FRAME_TOLERANCE = 0.05  # fields of view whose extents differ by more than this share along an axis are not one frame


def extent_mm(img) -> list:
    """The physical extent of an image's grid along each array axis (mm)."""
    return [round(float(n * h), 3) for n, h in zip(img.shape, img.spacing)]


def other_frame(a, b) -> bool:
    """Whether two extents (mm per axis) differ by more than FRAME_TOLERANCE along some axis."""
    return any(abs(x - y) > FRAME_TOLERANCE * max(x, y) for x, y in zip(a, b))


def extent_text(extent) -> str:
    """An extent as the notes give sizes: i x j (x k) mm."""
    return " x ".join(f"{x:.4g}" for x in extent[::-1]) + " mm"


def _regional_frame(regions, fixed_images, func):
    """A regional prior's frame, the first training image's extent (None for one region); a warning where the
    training images' fields of view differ: a region then covers other anatomy in each pair."""
    if int(np.prod(regions)) == 1:
        return None
    extents = [extent_mm(img) for img in fixed_images]
    other = next((e for e in extents[1:] if other_frame(e, extents[0])), None)
    if other is not None:
        warnings.warn(f"{func}: the training pairs' fields of view differ ({extent_text(extents[0])} and "
                      f"{extent_text(other)}): each region of a regional prior then covers other anatomy in each pair; "
                      "regional priors are for images in one frame (atlas space, one scanner's field of view)",
                      PriorRegWarning, stacklevel=3)
    return extents[0]


def _read_npz(path: str) -> tuple:
    """(tables, region masses or None, training spread or None, metadata) of a prior file, as stored; a
    file that is missing, not a priorreg prior or of a format version this priorreg does not read is refused."""
    if os.path.isdir(path):
        raise PriorRegError(f"Prior.load(): {path} is a folder; give the prior's .npz file")
    if not os.path.isfile(path):
        raise PriorRegError(f"Prior.load(): no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            tables = np.asarray(z["tables"], dtype=np.float64)
            mass = np.asarray(z["region_mass"], dtype=np.float64) if "region_mass" in z.files else None
            pair_kl = np.asarray(z["pair_kl"], dtype=np.float64) if "pair_kl" in z.files else None
            meta = json.loads(str(z["meta"]))
    except Exception:
        raise PriorRegError(f"Prior.load(): {path} is not a priorreg prior file (.npz written by fit_prior)") from None
    if meta.get("format") != FORMAT:
        raise PriorRegError(f"Prior.load(): {path} is not a priorreg prior file")
    if meta.get("version") not in (1, FORMAT_VERSION):
        raise PriorRegError(f"Prior.load(): {path} has prior format version {meta.get('version')}; "
                            f"this priorreg reads versions 1 to {FORMAT_VERSION}")
    return tables, mass, pair_kl, meta


def _bad_metadata(dim, n_pairs, ranges, sigma, normalization, regions) -> str:
    """What is impossible in a prior file's metadata ("" if nothing)."""
    if dim not in (2, 3) or n_pairs < 1 or min(regions, default=0) < 1:
        return f"dim {dim}, {n_pairs} training pairs, regions {list(regions)}"
    if len(ranges) != 2 or any(len(r) != 2 or not (np.isfinite(r).all() and r[0] < r[1]) for r in ranges):
        return f"intensity ranges {[list(r) for r in ranges]}: each needs a finite low < high"
    if not (np.isfinite(sigma) and sigma >= 0) or normalization not in NORMALIZATIONS:
        return f"parzen_sigma {sigma}, normalization {normalization!r}"
    return ""


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _pair_lists(fixed, moving, masks, func: str) -> tuple:
    """(fixed, moving, masks) as lists of one length (masks: None for each pair without)."""
    fixed, moving = _as_list(fixed), _as_list(moving)
    if len(fixed) == 0 or len(fixed) != len(moving):
        raise PriorRegError(f"{func}: need n >= 1 pairs with as many fixed as moving images, got {len(fixed)} and {len(moving)}")
    masks = [None] * len(fixed) if masks is None else _as_list(masks)
    if len(masks) != len(fixed):
        raise PriorRegError(f"{func}: got {len(masks)} masks for {len(fixed)} pairs")
    return fixed, moving, masks


def _training_pairs(fixed, moving, masks, spacing, normalization: str, levels: int, func: str) -> list:
    """The checked pairs: [(fixed Image, normalised fixed array, normalised moving array, mask or None)]."""
    pairs = []
    for j, (f, m, k) in enumerate(zip(fixed, moving, masks)):
        f, m = on_one_grid(f, m, func)  # a plain array beside an Image: on its grid, as in register()
        fi = as_image(f, f"fixed[{j}]", func, spacing)
        mi = as_image(m, f"moving[{j}]", func, spacing)
        check_training_pair(fi, mi, j, pairs[0][0] if pairs else fi, func)
        pyramid.check_levels(fi.shape, levels, func, spacing=fi.spacing)
        pair = (fi, normalize(fi.array, normalization), normalize(mi.array, normalization))
        _refuse_repeat(pair, pairs, func)
        mk = None if k is None else with_margin(as_mask(k, fi, f"masks[{j}]", func), fi.spacing)  # as register()
        pairs.append((*pair, mk))
    return pairs


def _refuse_repeat(pair: tuple, pairs: list, func: str) -> None:
    """A pair given twice (the same images, up to the intensity normalisation) looks like two pairs that
    agree perfectly: alpha "auto" would trust the prior most (its spread near 0) where one pair gets no
    weight."""
    fi, fn, mn = pair
    for i, (other, on, om, _) in enumerate(pairs):
        if other.same_grid(fi) and np.array_equal(on, fn) and np.array_equal(om, mn):
            raise PriorRegError(f"{func}: pair {len(pairs)} repeats pair {i} (the same fixed and moving images); give "
                                "each training pair once: a repeated pair would count as agreement between pairs")


def _pooled_tables(pairs: list, spec: HistogramSpec, regs: tuple, levels: int) -> tuple:
    """(tables (levels, R, B, B): each region's table averaged over the pairs that cover it, region mass
    (levels, R), each pair's global table (levels, n, B, B)). A region no pair covers (masks) takes the
    level's global table."""
    R, B, n = int(np.prod(regs)), spec.bins, len(pairs)
    sums, seen, mass = np.zeros((levels, R, B, B)), np.zeros((levels, R)), np.zeros((levels, R))
    per_pair, glob = np.zeros((levels, n, B, B)), np.zeros((levels, B, B))
    for j, (fi, fn, mn, mk) in enumerate(pairs):
        ft = torch.as_tensor(fn, dtype=torch.float64)
        mt = torch.as_tensor(mn, dtype=torch.float64)
        kt = None if mk is None else torch.as_tensor(mk, dtype=torch.float64)
        sp = fi.spacing
        fl, ml, kl = pyramid.image_pyramid(ft, levels, sp), pyramid.image_pyramid(mt, levels, sp), pyramid.mask_pyramid(kt, levels, sp)
        for lv in range(levels):
            energy = JointHistogramEnergy(fl[lv], ml[lv], pyramid.level_spacing(fi.spacing, lv), spec, [], kl[lv], regions=regs)
            P, Pr, *_ = energy.table(ml[lv])
            has = (energy.pi > 0).cpu().numpy()
            sums[lv] += Pr.cpu().numpy() * has[:, None, None]
            seen[lv] += has
            mass[lv] += energy.pi.cpu().numpy() / n
            per_pair[lv, j] = P.cpu().numpy()
            glob[lv] += per_pair[lv, j] / n
    tables = np.where(seen[..., None, None] > 0, sums / np.maximum(seen, 1)[..., None, None], glob[:, None])
    return tables, mass, per_pair


def check_regions(regions, dim, shapes, levels, func, name="regions", spacings=None) -> tuple:
    """Validate ``regions``: k or one k per axis, each block >= 2 voxels at the coarsest level."""
    r = (regions,) * dim if isinstance(regions, (int, np.integer)) else tuple(regions)
    if len(r) != dim or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in r):
        raise PriorRegError(f"{func}: {name} must be an integer >= 1 or {dim} of them (one per axis), got {regions!r}")
    for shape, sp in zip(shapes, spacings or [None] * len(shapes)):
        coarse = [max(1, n // f) for n, f in zip(shape, level_factors(spacing_or_isotropic(shape, sp), levels - 1))]
        if any(k > c // 2 for k, c in zip(r, coarse)):
            raise PriorRegError(
                f"{func}: {name}={list(r)} is too fine for images of shape {shape} at {levels} level(s): the coarsest "
                f"level has shape {coarse} and each block needs at least 2 voxels per axis; use fewer {name} or levels"
            )
    return tuple(int(k) for k in r)
