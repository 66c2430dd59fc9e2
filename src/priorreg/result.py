"""Stage 5 of :func:`priorreg.register`: what a registration returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .jacobian import jacobian_determinant
from .image import Image, every_kth, on_grid_of, plane_offset, spacing_text
from .inverse import invert_field
from .mixups import mirror_notes, unrelated_notes
from .options import RegistrationOptions
from .resample import warp, warp_with_fov
from .transform import embed_in_volume


@dataclass
class RegistrationResult:
    """What :func:`priorreg.register` returns.

    Attributes
    ----------
    field : ndarray of shape (d, *fixed.shape)
        Physical displacement in mm; component k moves along the fixed image's
        array axis k. Pull-back: fixed voxel x samples the moving image at
        x + field(x). ``field_world()`` gives it in world (ITK LPS) coordinates.
    warped : Image
        The moving image resampled on the fixed grid through the field; 0 outside the
        moving image's field of view (``fov``).
    fixed : Image
        The fixed image (its geometry defines the field's grid).
    history : list of LevelHistory
        Energy per accepted iteration, per term, per level (coarsest first). ``history[i].level`` is
        the pyramid index (0 = finest); text shown to users counts coarse first (level 1/3 is the
        coarsest of three, :func:`priorreg.pyramid.level_label`).
    jacobian : ndarray
        det(I + grad u) on the fixed grid.
    jacobian_stats : dict
        min, max, percent_nonpositive of ``jacobian``.
    options : RegistrationOptions
        The options used (the preset's, with explicit options applied).
    preset : str or None
        The preset the options came from (None: ``options=`` was given).
    preset_note : str or None
        Why ``preset`` was chosen where none was asked for (a PET or SPECT file: "functional").
    warnings : list of str
        What looked wrong with the inputs (each also issued as a :class:`PriorRegWarning`),
        e.g. a prior that fits the pair far better with the modalities swapped.
    fov : ndarray of bool
        Fixed voxels whose displaced position lies inside the moving image.
    linear : LinearResult or None
        The linear stage's transform (fixed world x -> moving world A x + t), already
        included in ``field``.
    prior_weights : list of dict
        With alpha="auto": per pyramid level (coarsest first) the alpha chosen and the evidence
        behind it (priorreg.prior_weight.choose_alpha); empty otherwise.
    """

    field: np.ndarray
    warped: Image
    fixed: Image
    history: list
    jacobian: np.ndarray
    jacobian_stats: dict
    options: RegistrationOptions
    prior: dict | None
    ranges: tuple
    normalization: str
    seconds: float
    device: str
    moving: Image = field(repr=False, default=None)
    moving_on_fixed: Image = field(repr=False, default=None)  # before registration, for comparisons
    warnings: list = field(default_factory=list)  # PriorRegWarning messages of this run
    preset: str | None = None
    preset_note: str | None = None
    fov: np.ndarray = field(repr=False, default=None)
    linear: object = None
    prior_weights: list = field(default_factory=list)  # alpha="auto": per level, coarsest first, alpha and its evidence
    threads: int | None = None  # torch's CPU threads during the run

    def field_world(self) -> np.ndarray:
        """The field as (*shape, d) world vectors in mm: ITK's LPS x, y, z (2D: x, y; a slice read from a 3D file:
        the two world axes of its plane, e.g. y and z for a sagittal slice, with x, the dropped one, left out)."""
        return np.einsum("ij,j...->...i", self.fixed.direction, self.field)

    def linear_in_files(self):
        """``linear`` as linear.tfm and report.json hold it: for a slice read from a 3D file, the 3D transform of
        the files' world (the map within the plane, and the shift to the moving slice's plane); else ``linear``."""
        vol = getattr(self.fixed, "volume", None)
        if self.linear is None or vol is None:
            return self.linear
        return embed_in_volume(self.linear, vol.drop, float(vol.origin[vol.drop]), self.plane_gap)

    @property
    def plane_gap(self) -> float:
        """How far (mm, along the normal) the moving slice's plane lies from the fixed one's, for single slices
        read from 3D files (else 0): linear.tfm carries it, the 2D registration did not find it."""
        return 0.0 if self.moving is None else plane_offset(self.fixed, self.moving, "RegistrationResult")

    def apply(self, image, interpolation: str = "linear") -> Image:
        """Warp another image of the moving space (e.g. a label map) through the field. A plain array is
        taken on the moving image's grid (it needs the moving image's shape); an Image keeps its own."""
        image = on_grid_of(image, self.moving, "image", "RegistrationResult.apply()")
        return warp(image, self.field, reference=self.fixed, interpolation=interpolation)

    def apply_inverse(self, image, interpolation: str = "linear") -> Image:
        """Warp an image of the fixed space (e.g. labels drawn on the fixed image) onto the moving image's grid,
        through the inverse of the field (:mod:`priorreg.inverse`). A plain array is taken on the fixed grid."""
        image = on_grid_of(image, self.fixed, "image", "RegistrationResult.apply_inverse()")
        inv = invert_field(self.field, self.fixed, self.moving, device=self.device)
        return warp(image, inv.field, reference=self.moving, interpolation=interpolation, device=self.device)

    @property
    def final_energy(self) -> float:
        return self.history[-1].energy[-1]

    def __repr__(self) -> str:  # the dataclass's would print every array (some 12 000 characters for a slice)
        shape = "x".join(str(n) for n in self.fixed.shape)
        its = "+".join(str(h.iterations) for h in self.history)
        return (f"RegistrationResult({self.fixed.ndim}D {shape}, preset={self.preset!r}, {its} iterations, "
                f"{self.seconds:.1f} s, final energy {self.final_energy:.6g}, {len(self.warnings)} warning(s))")

    def as_dict(self) -> dict:
        return {
            "preset": self.preset,
            "preset_note": self.preset_note,
            "options": self.options.as_dict(),
            "prior": self.prior,
            "ranges": [list(r) for r in self.ranges],
            "normalization": self.normalization,
            "seconds": self.seconds,
            "device": self.device,
            "final_energy": self.final_energy,
            "jacobian": self.jacobian_stats,
            "linear": None if self.linear is None else self.linear_in_files().as_dict(),
            "fov_percent": None if self.fov is None else float(100.0 * np.mean(self.fov)),
            "levels": [h.as_dict() for h in self.history],
            "warnings": list(self.warnings),
            "prior_weights": list(self.prior_weights),
        }


SMALL_FIELD_VOXELS = 0.5  # below this mean displacement the field is of the order of the default's error floor
SMALL_FIELD_SAMPLES = 2**20  # voxels the mean is taken over at most (every k-th along each axis)


def small_field_notes(field: np.ndarray, spacing, region) -> list:
    """A note when the field moves the fixed voxels in ``region`` (the mask, or the fixed image's Otsu
    foreground as the nearly-aligned rule of :mod:`priorreg.deformable` measures it) by less than
    SMALL_FIELD_VOXELS voxels of ``spacing`` (the finest level's: the moving image's where they are far
    coarser, :mod:`priorreg.working_grid`) on average: the default ends 0.1-0.4 voxel from the truth even on an
    aligned pair, so on a pair misaligned by less than about half a voxel it can be worse than no registration
    (benchmarks/README.md, "Small warps: the default's error floor", "A coarser moving image")."""
    every = (slice(None, None, every_kth(field.shape[1:], SMALL_FIELD_SAMPLES)),) * (field.ndim - 1)
    field = field[(slice(None),) + every]  # a mean needs no more (a CT-sized grid: 3 s and 1 GB otherwise)
    region = None if region is None else np.asarray(region)[every]
    h = np.reshape(np.asarray(spacing, dtype=float), (-1,) + (1,) * (field.ndim - 1))
    size = np.sqrt(((field / h) ** 2).sum(0))
    inside = None if region is None else np.asarray(region) > 0
    mean = float(size[inside].mean()) if inside is not None and inside.any() else float(size.mean())
    if mean >= SMALL_FIELD_VOXELS:
        return []
    return [f"register(): the field is small (mean {mean:.2f} voxel of {spacing_text(spacing)} mm), of the order of priorreg's error on pairs that "
            "were aligned already (0.1-0.4 voxel on the benchmark's): if this pair was aligned already, the unregistered "
            "image may be as good; compare the two"]


FOLDING_PERCENT = 0.1  # a field that folds more of the voxels than this is reported
MIN_COVERAGE = 0.5  # ... and one that leaves more than half the fixed anatomy without moving-image data


def outcome_notes(result: "RegistrationResult", region) -> list:
    """Notes on what a finished registration produced: folding (Jacobian <= 0), and a moving image that
    covers less than MIN_COVERAGE of the fixed image's ``region`` (mask or foreground) after registration, and a
    moving image whose axes look mirrored or swapped, and images that share no information
    (:mod:`priorreg.mixups`)."""
    notes = []
    js = result.jacobian_stats
    if js["percent_nonpositive"] > FOLDING_PERCENT:
        notes.append(f"register(): the field folds {js['percent_nonpositive']:.2f}% of the voxels (Jacobian min "
                     f"{js['min']:.3f}): check the warped image; a stiffer field (bending, regularization) avoids it")
    if result.fov is not None and np.asarray(region).any():
        share = coverage_share(result.fov, region)
        if share < MIN_COVERAGE:
            notes.append(f"register(): the moving image covers only {100 * share:.0f}% of the fixed image's anatomy "
                         "after registration; the warped image is background elsewhere")
    return notes + mirror_notes(result, region) + unrelated_notes(result, region)


def coverage_share(fov, region) -> float:
    """The share of ``region`` (a non-empty mask on the same grid) inside the field of view ``fov``."""
    return float(np.asarray(fov, dtype=bool)[np.asarray(region) > 0].mean())


def jacobian_stats(jac: np.ndarray) -> dict:
    return {"min": float(jac.min()), "max": float(jac.max()), "percent_nonpositive": float(100.0 * np.mean(jac <= 0))}


def make_result(inp, pyr, field_np, history, intensity_maps, warnings, seconds, linear=None) -> RegistrationResult:
    """Resample the moving image through the field (an array, mm) and collect what the run did."""
    fix, mov = inp.fixed, inp.moving
    jac = jacobian_determinant(torch.as_tensor(field_np, dtype=torch.float64), fix.spacing).cpu().numpy()
    prior_info = None if inp.prior is None else inp.prior.metadata()
    warped, fov = warp_with_fov(mov, field_np, reference=fix, device=str(inp.device), allow_empty=True)
    if intensity_maps:
        prior_info["intensity_maps"] = intensity_maps
    return RegistrationResult(
        field=field_np,
        warped=warped,
        fixed=fix,
        history=history,
        jacobian=jac,
        jacobian_stats=jacobian_stats(jac),
        options=inp.options,
        prior=prior_info,
        ranges=pyr.ranges,
        normalization=pyr.recipe,
        seconds=seconds,
        device=str(inp.device),
        moving=mov,
        moving_on_fixed=mov if fix.same_grid(mov) else warp(mov, None, reference=fix, allow_empty=True),
        warnings=warnings,
        preset=inp.preset,
        preset_note=inp.preset_note,
        fov=fov,
        linear=linear,
        prior_weights=[h.prior_weight for h in history if h.prior_weight is not None],
    )
