"""The linear map x -> A x + t (world mm, fixed to moving, as ITK transforms): :class:`LinearResult`,
its decomposition into rotation, scales and shears, the displacement field it makes on a grid
(:func:`linear_to_field`), its composition with a deformable field (:func:`compose_field`), a single
slice's map in 3D (:func:`embed_in_volume`, :func:`in_plane`), and ITK transform files (.tfm, .mat, .h5).
:mod:`priorreg.linear` estimates one.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import PriorRegError, itk_reason, name_problem
from .image import Image

TRANSFORM_EXTENSIONS = (".tfm", ".txt", ".mat", ".h5", ".hdf5")


# --------------------------------------------------------------------------- result


@dataclass
class LinearResult:
    """A linear transform, fixed world point x -> moving world point ``matrix @ x + translation``.

    Attributes
    ----------
    matrix : ndarray (d, d)
        Linear part A, world (LPS) coordinates.
    translation : ndarray (d,)
        t in mm, world (LPS) coordinates.
    kind : str
        "rigid", "affine" (or "identity").
    center : ndarray (d,)
        The fixed-space point the parameters below are reported about (world mm).
    rotation_degrees : tuple
        2D: (angle,); 3D: angles about the world x, y, z axes, A = Rz Ry Rx (scales, shears).
    translation_mm : tuple
        Displacement of ``center``: A c + t - c.
    scales, shears : tuple
        A = R diag(scales) (I + H), H strictly upper triangular holding ``shears`` row by row.
    metric_before, metric_after : float
        The minimised energy (nats; -MI, or alpha*(-MI) + (1-alpha)*KL with a prior) at the
        finest level, at world alignment and for the result. Lower is better.
    mi_before, mi_after : float
        Mutual information (nats) at the finest level. Higher is better.
    overlap : float
        Fraction of the fixed samples (inside the mask) that land inside the moving image.
    seconds : float
    notes : list of str
    rejected : bool
        The optimum raised MI but failed the overlap or the MIND check, so world alignment (or
        the initial transform) was kept: MI rose, but not trustworthily.
    rigid : LinearResult or None
        Of an affine estimate: the rigid stage it started from, finished and checked as
        ``estimate_linear(kind="rigid")`` would return it (the same computation), for a caller
        that falls back to rigid. Not in :meth:`as_dict`.
    """

    matrix: np.ndarray
    translation: np.ndarray
    kind: str = "affine"
    center: np.ndarray = None
    rotation_degrees: tuple = ()
    translation_mm: tuple = ()
    scales: tuple = ()
    shears: tuple = ()
    metric_before: float = float("nan")
    metric_after: float = float("nan")
    mi_before: float = float("nan")
    mi_after: float = float("nan")
    overlap: float = float("nan")
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    rejected: bool = False
    rigid: LinearResult | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, dtype=float)
        d = self.matrix.shape[0]
        self.translation = np.asarray(self.translation, dtype=float).reshape(d)
        self.center = np.zeros(d) if self.center is None else np.asarray(self.center, dtype=float).reshape(d)
        angles, scales, shears = decompose(self.matrix)
        self.rotation_degrees = tuple(float(np.degrees(a)) for a in angles)
        self.scales, self.shears = tuple(map(float, scales)), tuple(map(float, shears))
        self.translation_mm = tuple(map(float, self.matrix @ self.center + self.translation - self.center))

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0]

    def transform_points(self, points) -> np.ndarray:
        """Map fixed world points (..., d) to moving world points."""
        return np.asarray(points, dtype=float) @ self.matrix.T + self.translation

    def as_dict(self) -> dict:
        """JSON-ready summary (report.json)."""
        keys = ("kind", "rotation_degrees", "translation_mm", "scales", "shears", "metric_before",
                "metric_after", "mi_before", "mi_after", "overlap", "seconds", "notes")
        out = {k: getattr(self, k) for k in keys}
        # the whole rotation (as the command line's summary gives it); rotation_degrees are the angles of the
        # rotation factor of A = R diag(scales) (I + H), which differ from it where there is shear or scaling
        out["rotation_angle_degrees"] = rotation_angle(self.matrix)
        out.update(matrix=self.matrix.tolist(), translation=self.translation.tolist(), center=self.center.tolist())
        return out


def identity(ndim: int) -> LinearResult:
    """The identity transform (world alignment)."""
    return LinearResult(np.eye(ndim), np.zeros(ndim), kind="identity")


def decompose(A: np.ndarray):
    """(angles (rad), scales, shears) with A = R(angles) diag(scales) (I + H(shears)).

    QR with a positive diagonal; a reflection (det A < 0) shows as a negative last scale.
    """
    A = np.asarray(A, dtype=float)
    d = A.shape[0]
    Q, U = np.linalg.qr(A)
    sgn = np.where(np.diag(U) < 0, -1.0, 1.0)
    Q, U = Q * sgn, sgn[:, None] * U
    if np.linalg.det(Q) < 0:
        Q[:, -1], U[-1] = -Q[:, -1], -U[-1]
    scales = np.diag(U).copy()
    H = U / scales[:, None] - np.eye(d)
    shears = H[np.triu_indices(d, 1)]
    if d == 2:
        return np.array([math.atan2(Q[1, 0], Q[0, 0])]), scales, shears
    beta = -math.asin(float(np.clip(Q[2, 0], -1, 1)))
    if abs(Q[2, 0]) > 1 - 1e-9:  # gimbal lock (a quarter turn about y): x and z turn about one axis; put it in z
        return np.array([0.0, beta, math.atan2(-Q[0, 1], Q[1, 1])]), scales, shears
    return np.array([math.atan2(Q[2, 1], Q[2, 2]), beta, math.atan2(Q[1, 0], Q[0, 0])]), scales, shears


def rotation_angle(A) -> float:
    """The angle (degrees) of the rotation in a linear map: that of its polar decomposition's rotation, about
    one axis (the largest of the Euler angles understated a 6.2 degree rotation as 5.2)."""
    U, _, Vt = np.linalg.svd(np.asarray(A, dtype=float))
    R = U @ Vt
    if R.shape[0] == 2:
        return float(abs(np.degrees(np.arctan2(R[1, 0], R[0, 0]))))
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


# --------------------------------------------------------------------------- fields and files


def linear_to_field(result: LinearResult, fixed: Image) -> np.ndarray:
    """The transform as a displacement field (d, *fixed.shape) in mm along the fixed ARRAY axes.

    Same convention as ``RegistrationResult.field``: the world displacement of voxel i is
    ``fixed.direction @ field[:, i]``, and fixed world x samples the moving image at
    x + that (= A x + t). Pass it as ``register(initial_field=...)``.
    """
    d = fixed.ndim
    if result.ndim != d:
        raise PriorRegError(f"linear_to_field(): the transform is {result.ndim}D but the fixed image is {d}D")
    M, o = fixed.index_to_world()
    # An affine function of the voxel index i: field = B i + c, summed axis by axis (no index grid).
    Dinv_AmI = np.linalg.solve(fixed.direction, result.matrix - np.eye(d))
    B = Dinv_AmI @ M
    c = Dinv_AmI @ o + np.linalg.solve(fixed.direction, result.translation)
    out = np.empty((d, *fixed.shape))
    for j in range(d):
        out[j] = c[j]
        for k, n in enumerate(fixed.shape):
            out[j] += (B[j, k] * np.arange(n)).reshape([n if a == k else 1 for a in range(d)])
    return out


def compose_field(result: LinearResult, field: np.ndarray, fixed: Image) -> np.ndarray:
    """The one field (d, *fixed.shape) of "the linear transform, then ``field``".

    ``field`` is a displacement (fixed array axes, mm) estimated against the moving image
    already resampled onto the fixed grid through ``result`` (``warp(moving,
    linear_to_field(result, fixed), reference=fixed)``). Fixed world x then samples the
    moving image at A (x + D field(x)) + t, i.e. at x + D (linear field + D^-1 A D field).
    """
    f = np.asarray(field, dtype=float)
    if f.shape != (fixed.ndim, *fixed.shape):
        raise PriorRegError(f"compose_field(): field must have shape {(fixed.ndim, *fixed.shape)}, got {f.shape}")
    D = fixed.direction
    K = np.linalg.solve(D, result.matrix @ D)
    out = linear_to_field(result, fixed)
    for i in range(fixed.ndim):  # K f, added in place (one whole-grid temporary at a time, not three)
        for j in range(fixed.ndim):
            if K[i, j] != 0.0:
                out[i] += K[i, j] * f[j]
    return out


def _ext(path) -> str:
    p = os.fspath(path).lower()
    return next((e for e in TRANSFORM_EXTENSIONS if p.endswith(e)), os.path.splitext(p)[1])


def embed_in_volume(result: LinearResult, drop: int, plane: float, offset: float = 0.0) -> LinearResult:
    """The 2D transform of a single-slice 3D image as a 3D one: the same map in the slice's plane (the world
    axes other than ``drop``), a shift by ``offset`` along ``drop`` (from the fixed plane at
    ``world[drop] = plane`` to the moving slice's, ``image.plane_offset``), so that tools applying it to the
    3D files (ITK, ANTs, Slicer) get a transform of their dimension."""
    keep = [k for k in range(3) if k != drop]
    A, t, c = np.eye(3), np.zeros(3), np.zeros(3)
    A[np.ix_(keep, keep)] = result.matrix
    t[keep], t[drop] = result.translation, offset
    c[keep], c[drop] = result.center, plane
    return dataclasses.replace(result, matrix=A, translation=t, center=c, rigid=None)  # its notes and scores kept


def in_plane(result: LinearResult, drop: int, plane: float, what: str) -> LinearResult:
    """The inverse of :func:`embed_in_volume`: a 3D transform that maps the plane ``world[drop] = plane``
    onto a parallel one (the moving slice's), as the 2D map within it (what priorreg writes for a
    single-slice 3D image); the shift between the planes is left out, as the 2D registration leaves it."""
    keep = [k for k in range(3) if k != drop]
    A = result.matrix
    y0 = _plane_origin_image(result, drop, plane)
    if np.abs(A[drop, keep]).max() > 1e-6:
        raise PriorRegError(f"{what} holds a 3D transform that moves points out of the images' plane (world axis "
                            f"{'xyz'[drop]} = {plane:g} mm); a single-slice image needs one within it")
    center = None if result.center is None else np.asarray(result.center)[keep]
    return LinearResult(A[np.ix_(keep, keep)], y0[keep], kind=result.kind, center=center)


def _plane_origin_image(result: LinearResult, drop: int, plane: float) -> np.ndarray:
    """Where a 3D transform takes the plane ``world[drop] = plane``'s point at the other axes' origin."""
    x0 = np.zeros(3)
    x0[drop] = plane
    return result.matrix @ x0 + result.translation


def through_plane_shift(result: LinearResult, drop: int, plane: float) -> float:
    """How far (mm) a 3D transform moves the plane ``world[drop] = plane`` along its normal: what
    :func:`in_plane` leaves out."""
    return float(_plane_origin_image(result, drop, plane)[drop]) - plane


def write_itk_transform(path, result: LinearResult, ndim: int) -> None:
    """Write ``result`` as an ITK AffineTransform (.tfm/.txt text, .mat MATLAB binary, .h5).

    ITK transforms map fixed-space points to moving-space points (LPS), the direction of
    :class:`LinearResult`, so SimpleITK's ``Resample(moving, fixed, transform)``, ANTs'
    antsApplyTransforms and Slicer reproduce the resampling through :func:`linear_to_field`.
    """
    import SimpleITK as sitk

    func = "write_itk_transform()"
    if result.ndim != ndim:
        raise PriorRegError(f"{func}: the transform is {result.ndim}D but ndim={ndim}")
    if _ext(path) not in TRANSFORM_EXTENSIONS:
        raise PriorRegError(f"{func}: {os.fspath(path)} needs one of the extensions {', '.join(TRANSFORM_EXTENSIONS)}")
    c = result.center
    tx = sitk.AffineTransform(ndim)
    tx.SetCenter([float(v) for v in c])
    tx.SetMatrix([float(v) for v in result.matrix.ravel()])
    tx.SetTranslation([float(v) for v in result.matrix @ c + result.translation - c])
    try:
        sitk.WriteTransform(tx, os.fspath(path))
    except RuntimeError as e:
        raise PriorRegError(f"{func}: cannot write {os.fspath(path)} ({itk_reason(e)})") from None


def _linear_part(tx, ndim: int):
    """(A, t) of a linear sitk transform, read through TransformPoint (exact for any linear kind)."""
    t = np.array(tx.TransformPoint([0.0] * ndim))
    A = np.stack([np.array(tx.TransformPoint([float(v) for v in e])) - t for e in np.eye(ndim)], axis=1)
    return A, t


def read_itk_transform(path, ndim: int, volume=None) -> LinearResult:
    """Read a linear ITK transform file (.tfm/.txt/.mat/.h5, as ANTs, elastix's ITK export and
    Slicer write): Affine, Euler, Versor, Similarity, ScaleSkewVersor, Translation, or a
    CompositeTransform holding one of them. Anything else is refused with a PriorRegError.
    For 2D images read from a single-slice 3D file (their ``volume``) a 3D transform within
    their plane is taken too (:func:`in_plane`), as priorreg writes it for them.
    """
    import SimpleITK as sitk

    func = "read_itk_transform()"
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise PriorRegError(f"{func}: no such file: {p}")
    problem = name_problem(p, func)
    if problem:
        raise PriorRegError(problem)
    try:
        tx = sitk.ReadTransform(p)
    except RuntimeError:
        raise PriorRegError(f"{func}: {p} is not an ITK transform file that SimpleITK can read (.tfm, .txt, .mat "
                            "or .h5); elastix parameter files need transformix or an ITK export first") from None
    if tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        if comp.GetNumberOfTransforms() != 1:
            raise PriorRegError(f"{func}: {p} holds a composite of {comp.GetNumberOfTransforms()} transforms; "
                                "give a file with one linear transform")
        tx = comp.GetNthTransform(0)
    if volume is not None and ndim == 2 and tx.GetDimension() == 3:
        return in_plane(read_itk_transform(p, 3), volume.drop, float(volume.origin[volume.drop]), f"{func}: {p}")
    if tx.GetDimension() != ndim:
        raise PriorRegError(f"{func}: {p} holds a {tx.GetDimension()}D transform but the images are {ndim}D")
    if not tx.IsLinear():
        raise PriorRegError(f"{func}: {p} holds a {tx.GetName()}, not a linear transform (affine, Euler, versor)")
    A, t = _linear_part(tx, ndim)
    if not np.all(np.isfinite(A)) or abs(np.linalg.det(A)) < 1e-6:
        raise PriorRegError(f"{func}: {p} holds a singular transform (determinant {np.linalg.det(A):.3g}): it maps "
                            "the image onto a plane, a line or a point")
    center = np.array(tx.GetFixedParameters()[:ndim]) if len(tx.GetFixedParameters()) >= ndim else None
    rigid = np.allclose(A.T @ A, np.eye(ndim), atol=1e-6)
    return LinearResult(A, t, kind="rigid" if rigid else "affine", center=center)
