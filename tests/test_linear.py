"""The linear stage (priorreg.linear): known rigid and affine transforms recovered on real
multi-modal pairs in 2D and 3D (anisotropic, oblique), overlap refusal, ITK transform I/O."""
from __future__ import annotations

import os
from importlib.resources import files

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from priorreg import Image, PriorRegError, fit_prior, warp
from priorreg.io import image_to_sitk, read_image, sitk_to_image
from priorreg.linear import estimate_linear
from priorreg.transform import LinearResult, compose_field, linear_to_field, read_itk_transform, write_itk_transform

BRAINWEB = files("priorreg") / "data" / "brainweb"
BRATS = "/work/shared/data/brats2013_deepmedic/brats_2013_pat0006_1"
SPINE = "/work/shared/data/sct_spine_errsm30"


@pytest.fixture(autouse=True)
def _one_thread():
    """The stage's tensors are small (a few 10^4 samples, 32 x 32 tables): extra intra-op
    threads only add synchronisation, which on a loaded machine costs 10x. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- helpers


def _affine(ndim, matrix, translation, center):
    tx = sitk.AffineTransform(ndim)
    tx.SetCenter([float(v) for v in center])
    tx.SetMatrix([float(v) for v in np.asarray(matrix).ravel()])
    tx.SetTranslation([float(v) for v in translation])
    return tx


def _rot2(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _rot3(ax, deg):
    t = sitk.Euler3DTransform()
    a = [0.0, 0.0, 0.0]
    a[ax] = np.radians(deg)
    t.SetRotation(*a)
    return np.array(t.GetMatrix()).reshape(3, 3)


def _errors(result: LinearResult, known, fixed, where=None):
    """Residual of known o result (identity when recovered) over the fixed grid (or ``where``):
    (max |x - known(A x + t)| in mm, mean, its rotation in degrees, error at the centre)."""
    M, o = fixed.index_to_world()
    idx = np.argwhere(np.ones(fixed.shape, bool) if where is None else where).astype(float)
    X = idx @ M.T + o
    Z = np.array([known.TransformPoint(y.tolist()) for y in result.transform_points(X)])
    err = np.linalg.norm(Z - X, axis=1)
    d = fixed.ndim
    K = np.array(known.GetMatrix()).reshape(d, d) @ result.matrix
    Q, U = np.linalg.qr(K)
    Q = Q * np.sign(np.diag(U))
    angle = np.degrees(np.arccos(np.clip((np.trace(Q) - (d - 2)) / 2, -1, 1)))
    c = result.center
    centre = np.linalg.norm(np.array(known.TransformPoint(result.transform_points(c).tolist())) - c)
    return err.max(), err.mean(), angle, centre


@pytest.fixture(scope="module")
def brainweb():
    return read_image(BRAINWEB / "BrainT1Slice.png"), read_image(BRAINWEB / "BrainProtonDensitySlice.png")


def _moved_2d(moving, known):
    m = image_to_sitk(moving)
    return sitk_to_image(sitk.Resample(m, m, known, sitk.sitkLinear, 0.0))


def _centre(img):
    M, o = img.index_to_world()
    return M @ ((np.array(img.shape) - 1) / 2) + o


# --------------------------------------------------------------------------- 2D recovery


@pytest.mark.parametrize(
    "kind, deg, shift, extra",
    [
        ("rigid", 12.0, (8.0, -6.0), np.eye(2)),
        ("affine", 12.0, (8.0, -6.0), np.diag([1.04, 0.97]) @ np.array([[1.0, 0.03], [0.0, 1.0]])),
        ("affine", -20.0, (30.0, 12.0), np.diag([1.05, 1.05])),  # the largest start
    ],
    ids=["rigid-12deg", "affine-scale-shear", "affine-20deg-30mm-5pct"],
)
def test_2d_known_transform_recovered(brainweb, kind, deg, shift, extra):
    fixed, moving = brainweb
    known = _affine(2, _rot2(deg) @ extra, shift, _centre(moving))
    r = estimate_linear(fixed, _moved_2d(moving, known), kind=kind)
    worst, mean, angle, _ = _errors(r, known, fixed)
    assert worst < 0.5, (worst, mean, angle)  # pixels (1 mm spacing), over the whole image
    assert angle < 0.5
    assert r.kind == kind and r.metric_after < r.metric_before and r.mi_after > r.mi_before
    assert r.overlap > 0.5 and r.seconds > 0


def test_2d_aligned_pair_stays_aligned(brainweb):
    fixed, moving = brainweb
    r = estimate_linear(fixed, moving, kind="affine")
    worst, _, angle, _ = _errors(r, _affine(2, np.eye(2), (0, 0), (0, 0)), fixed)
    assert worst < 0.5 and angle < 0.2
    assert r.metric_after <= r.metric_before


def test_2d_with_prior(brainweb):
    """alpha*(-MI) + (1-alpha)*KL against a prior learned on the aligned pair."""
    fixed, moving = brainweb
    prior = fit_prior(fixed, moving, bins=32, parzen_sigma=1.0, levels=3)
    known = _affine(2, _rot2(-10.0), (-7.0, 5.0), _centre(moving))
    r = estimate_linear(fixed, _moved_2d(moving, known), kind="rigid", prior=prior, alpha=0.5)
    worst, _, angle, _ = _errors(r, known, fixed)
    assert worst < 0.5 and angle < 0.5
    mi_only = estimate_linear(fixed, _moved_2d(moving, known), kind="rigid")
    assert r.metric_after != pytest.approx(mi_only.metric_after)  # the prior term is in the energy


def test_a_prior_of_another_dimension_is_refused(brainweb):
    fixed, moving = brainweb
    rng = np.random.default_rng(0)
    prior = fit_prior([rng.random((16, 16, 16))], [rng.random((16, 16, 16))], bins=16, levels=1)
    with pytest.raises(PriorRegError, match=r"learned on 3D images but the images are 2D; .* or estimate without it"):
        estimate_linear(fixed, moving, kind="rigid", prior=prior, alpha=0.5)


# --------------------------------------------------------------------------- 3D recovery


def _grid(ref, brain, spacing, direction, pad):
    """An empty sitk grid with this spacing/direction covering the brain of ``ref`` (+ pad mm)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(brain) > 0)[::40, ::-1]
    pts = np.array([ref.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in idx])
    D = np.asarray(direction, float).reshape(3, 3)
    lo, hi = (pts @ D).min(0) - pad, (pts @ D).max(0) + pad
    g = sitk.Image([int(n) for n in np.ceil((hi - lo) / np.array(spacing)) + 1], sitk.sitkFloat32)
    g.SetSpacing(spacing)
    g.SetDirection([float(v) for v in D.ravel()])
    g.SetOrigin((D @ lo).tolist())
    return g


@pytest.fixture(scope="module")
def brats():
    """FLAIR (fixed, 2.5 mm isotropic) and T1c (moving source, 1 mm) of one BraTS patient,
    and an oblique (20 deg about x, -15 deg about z), anisotropic 2 x 2 x 4.8 mm moving grid."""
    if not os.path.isdir(BRATS):
        pytest.skip("needs ../shared/data (BraTS 2013 FLAIR + T1c); not present")
    flair = sitk.ReadImage(f"{BRATS}/Flair_subtrMeanDivStd.nii.gz")
    t1c = sitk.ReadImage(f"{BRATS}/T1c_subtrMeanDivStd.nii.gz")
    brain = sitk.ReadImage(f"{BRATS}/brainmask.nii.gz")
    fgrid = _grid(flair, brain, (2.5, 2.5, 2.5), np.eye(3), 10.0)
    bg = float(np.min(sitk.GetArrayViewFromImage(flair)))
    fixed = sitk_to_image(sitk.Resample(flair, fgrid, sitk.Transform(), sitk.sitkLinear, bg))
    mask = sitk.GetArrayFromImage(sitk.Resample(brain, fgrid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    mgrid = _grid(flair, brain, (2.0, 2.0, 4.8), _rot3(0, 20.0) @ _rot3(2, -15.0), 25.0)
    return fixed, t1c, mgrid, mask


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("rigid", np.eye(3)),
        ("affine", np.diag([1.04, 0.97, 1.02]) @ np.array([[1, 0.03, 0], [0, 1, -0.02], [0, 0, 1.0]])),
    ],
)
def test_3d_oblique_anisotropic_recovered(brats, kind, extra):
    fixed, t1c, mgrid, brain = brats
    A = _rot3(0, 8.0) @ _rot3(1, -6.0) @ _rot3(2, 12.0) @ extra
    known = _affine(3, A, (12.0, -9.0, 6.0), _centre(fixed))
    bg = float(np.min(sitk.GetArrayViewFromImage(t1c)))
    moving = sitk_to_image(sitk.Resample(t1c, mgrid, known, sitk.sitkLinear, bg))
    assert not np.allclose(moving.direction, np.eye(3)) and moving.spacing[0] == pytest.approx(4.8)
    r = estimate_linear(fixed, moving, kind=kind)
    worst, mean, angle, centre = _errors(r, known, fixed, brain)
    # This pair's own MI optimum (no transform applied) lies 0.3 mm / 0.15 deg from identity.
    assert angle < 0.5 and centre < 0.5 and mean < 0.5, (worst, mean, angle, centre)
    assert worst < 1.0


def test_3d_thin_slab_partial_overlap(brats):
    """A 20-slice 2.4 mm oblique slab (a third of the brain) onto the whole volume: samples
    outside the slab are left out of the histogram, the slab is placed."""
    fixed, t1c, mgrid, brain = brats
    known = _affine(3, _rot3(0, -7.0) @ _rot3(2, 9.0), (-10.0, 6.0, 8.0), _centre(fixed))
    size = list(mgrid.GetSize())
    slab = sitk.Image(size[:2] + [20], sitk.sitkFloat32)
    slab.SetSpacing(mgrid.GetSpacing()[:2] + (2.4,))
    slab.SetDirection(mgrid.GetDirection())
    slab.SetOrigin(mgrid.TransformIndexToPhysicalPoint([0, 0, size[2] // 2 - 5]))
    bg = float(np.min(sitk.GetArrayViewFromImage(t1c)))
    moving = sitk_to_image(sitk.Resample(t1c, slab, known, sitk.sitkLinear, bg))
    r = estimate_linear(fixed, moving, kind="rigid", fixed_mask=brain)
    worst, mean, angle, _ = _errors(r, known, fixed, brain)
    assert 0.2 < r.overlap < 0.7
    assert angle < 0.5 and mean < 0.5 and worst < 1.0, (worst, mean, angle)


def test_initial_transform_from_file_is_refined(brainweb, tmp_path):
    """A 35 degree rotation (beyond the start search) is recovered from a rough initial ITK file."""
    fixed, moving = brainweb
    known = _affine(2, _rot2(35.0), (5.0, 4.0), _centre(moving))
    rough = _affine(2, _rot2(-31.0), (-3.0, -2.0), _centre(moving))  # about the inverse, 4 deg off
    sitk.WriteTransform(rough, str(tmp_path / "rough.tfm"))
    initial = read_itk_transform(tmp_path / "rough.tfm", 2)
    r = estimate_linear(fixed, _moved_2d(moving, known), kind="rigid", initial=initial)
    worst, _, angle, _ = _errors(r, known, fixed)
    assert worst < 0.5 and angle < 0.5


def test_an_optimum_the_mind_check_rejects_falls_back_to_the_initial_transform_itself(brainweb, monkeypatch):
    """The note said "the initial is kept" while the identity was kept: the fallback had been chosen again
    between the initial transform and world alignment, by MI, and an aligned pair's MI picks the identity."""
    import priorreg.linear as lin

    fixed, moving = brainweb
    initial = LinearResult(np.eye(2), np.array([2.0, -1.5]), kind="rigid", center=np.zeros(2))
    monkeypatch.setattr(lin, "MIND_TOLERANCE", -1.0)  # every optimum that moved is rejected for MIND
    r = estimate_linear(fixed, moving, kind="rigid", initial=initial)
    assert r.rejected and r.notes[-1].endswith("the initial is kept"), r.notes
    np.testing.assert_allclose(r.translation, [2.0, -1.5], atol=1e-9)
    np.testing.assert_allclose(r.matrix, np.eye(2), atol=1e-12)


# --------------------------------------------------------------------------- refusals


def test_an_affine_estimate_carries_the_rigid_estimate_it_started_from(brainweb):
    """``estimate_linear(kind="affine").rigid`` is what ``kind="rigid"`` returns, bit for bit (the same
    search and rigid stage), so a caller falling back to rigid needs no second estimate."""
    fixed, moving = brainweb
    known = _affine(2, _rot2(9.0) @ np.diag([1.03, 0.98]), (6.0, -4.0), _centre(moving))
    moved = _moved_2d(moving, known)
    affine, rigid = estimate_linear(fixed, moved, kind="affine"), estimate_linear(fixed, moved, kind="rigid")
    r = affine.rigid
    assert r.kind == "rigid" and rigid.rigid is None and "rigid" not in affine.as_dict()
    assert np.array_equal(r.matrix, rigid.matrix) and np.array_equal(r.translation, rigid.translation)
    assert (r.metric_after, r.mi_after, r.notes, r.rejected) == (rigid.metric_after, rigid.mi_after, rigid.notes, rigid.rejected)
    assert not np.allclose(affine.matrix, r.matrix, atol=1e-3)  # the affine stage went on from it


def test_the_pipeline_falls_back_to_the_affine_estimates_own_rigid_stage(brainweb, monkeypatch):
    from priorreg import checks, linear, prealign

    fixed, moving = brainweb
    calls = []

    def counted(*a, **kw):
        calls.append(kw["kind"])
        return linear.estimate_linear(*a, **kw)

    monkeypatch.setattr(prealign, "estimate_linear", counted)
    monkeypatch.setattr(prealign, "implausible", lambda lin: True)  # as if the affine had scaled the anatomy
    inp = checks.validate(fixed, _moved_2d(moving, _affine(2, _rot2(9.0), (6.0, -4.0), _centre(moving))), prior=None,
                          mask=None, spacing=None, preset=None, options=None, initial_field=None, overrides={})
    lin = prealign.prealign(inp)
    assert calls == ["affine"] and lin.kind == "rigid" and "the rigid one is used" in lin.notes[-1]


def test_a_rigid_stage_that_kept_the_start_is_not_announced_as_used(brainweb, monkeypatch):
    """The affine optimum failed its check and the rigid stage had not improved on world alignment: the console
    said both "did not improve; it is kept" and "the rigid one, which passed, is used" (the same transform)."""
    from priorreg import checks, prealign

    def estimate(rigid_notes):
        rigid = LinearResult(np.eye(2), np.zeros(2), kind="rigid", center=np.zeros(2), notes=list(rigid_notes))
        lin = LinearResult(np.eye(2), np.zeros(2), kind="affine", center=np.zeros(2), rejected=True,
                           notes=["its optimum raised mutual information but worsened the MIND descriptor distance"])
        lin.rigid = rigid
        return lambda *a, **kw: lin

    fixed, moving = brainweb
    inp = checks.validate(fixed, moving, prior=None, mask=None, spacing=None, preset=None, options=None,
                          initial_field=None, overrides={})
    monkeypatch.setattr(prealign, "estimate_linear", estimate(["the linear stage did not improve on the world alignment; it is kept"]))
    lin = prealign.prealign(inp)
    assert lin.kind == "affine" and not any("which passed" in n for n in lin.notes + lin.rigid.notes)
    monkeypatch.setattr(prealign, "estimate_linear", estimate([]))  # a rigid optimum that passed is used instead
    lin = prealign.prealign(inp)
    assert lin.kind == "rigid" and "the rigid one, which passed, is used" in lin.notes[-1]


def test_mind_cross_check_keeps_the_fallback_when_mind_disagrees(brainweb):
    from priorreg.intensity import normalize
    from priorreg.linear import _cross_check
    from priorreg.transform import identity

    fixed, moving = brainweb
    f_n, m_n = normalize(fixed.array), normalize(moving.array)
    wrong = LinearResult(_rot2(8.0), np.array([7.0, -5.0]), kind="rigid", center=np.zeros(2))
    kept = _cross_check(fixed, f_n, moving, m_n, [(wrong, identity(2), "world alignment")])[0]  # the pair is aligned
    assert np.allclose(kept.matrix, np.eye(2)) and "MIND descriptor distance" in kept.notes[-1]
    known = _affine(2, _rot2(12.0), (8.0, -6.0), _centre(moving))
    moved = _moved_2d(moving, known)
    A, c = np.array(known.GetMatrix()).reshape(2, 2), np.array(known.GetCenter())
    t = np.array(known.GetTranslation()) + c - A @ c  # moved(y) = moving(A y + t): fixed x lies at y = A^-1 (x - t)
    right = LinearResult(np.linalg.inv(A), -np.linalg.solve(A, t), kind="rigid", center=np.zeros(2))
    assert _cross_check(fixed, f_n, moved, normalize(moved.array), [(right, identity(2), "world alignment")])[0] is right


@pytest.mark.skipif(not os.path.isdir(SPINE), reason="needs ../shared/data (spinal cord T1w/T2w); not present")
@pytest.mark.parametrize("seed", [802, 805])
def test_small_slab_where_mi_misleads_keeps_world_alignment(seed):
    """A 42 x 60 x 35 mm cord slab (T1w <- T2w, aligned up to a 4 mm smooth warp): global MI preferred a
    transform off the moving image (802: 0 % overlap, refused before) or 7 mm and 8 degrees off (805: MI
    0.029 -> 0.059). The linear stage keeps world alignment and says why."""
    import sys

    pytest.importorskip("nibabel", reason="benchmarks/cases_more.py reads the cord with nibabel (benchmarks/requirements.txt)")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        import cases_more

        c = cases_more.spine_3d(seed=seed)
    except cases_more.DataNotFound as e:
        pytest.skip(str(e))
    finally:
        sys.path.pop(0)
    sp = tuple(c["spacing"])
    r = estimate_linear(Image(c["fixed"], sp), Image(c["moving"], sp), kind="affine")
    assert np.allclose(r.matrix, np.eye(3)) and np.allclose(r.translation, 0.0)
    assert r.rejected and r.notes and ("small overlap" in r.notes[0] or "MIND" in r.notes[0])


def test_overlap_too_small_refused(brainweb):
    fixed, moving = brainweb
    patch = moving.array[100:112, 80:92]
    small = Image(patch, moving.spacing, (500.0, 500.0), moving.direction)
    with pytest.raises(PriorRegError, match="overlap too small to register"):
        estimate_linear(fixed, small, kind="rigid")


def test_bad_arguments_refused(brainweb):
    fixed, moving = brainweb
    with pytest.raises(PriorRegError, match="kind must be one of"):
        estimate_linear(fixed, moving, kind="bspline")
    with pytest.raises(PriorRegError, match="needs a learned prior"):
        estimate_linear(fixed, moving, alpha=0.5)
    with pytest.raises(PriorRegError, match="fixed_mask has shape"):
        estimate_linear(fixed, moving, fixed_mask=np.ones((3, 3)))


# --------------------------------------------------------------------------- fields and ITK files


def _oblique(ndim, shape, seed=0):
    """A smooth random image with anisotropic spacing, an oblique direction and an offset origin."""
    from scipy.ndimage import gaussian_filter

    arr = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0) * 100
    D = _rot2(25.0) if ndim == 2 else _rot3(0, 20.0) @ _rot3(1, -10.0)
    spacing = (1.5, 0.8) if ndim == 2 else (2.4, 1.0, 1.2)
    return Image(arr, spacing, tuple(np.arange(ndim) * 7.0 - 5), D)


def _some_transform(ndim, center):
    A = (_rot2(7.0) @ np.array([[1.03, 0.02], [0, 0.98]])) if ndim == 2 else (
        _rot3(0, 5.0) @ _rot3(2, -4.0) @ np.diag([1.02, 0.97, 1.01]))
    return LinearResult(A, np.arange(1, ndim + 1) * 1.7, kind="affine", center=center)


def test_field_is_the_transform_in_array_axes():
    img = _oblique(3, (10, 12, 9))
    r = _some_transform(3, _centre(img))
    u = linear_to_field(r, img)
    M, o = img.index_to_world()
    X = np.indices(img.shape).reshape(3, -1).T @ M.T + o
    world = X + (img.direction @ u.reshape(3, -1)).T  # the field convention: x + D u
    np.testing.assert_allclose(world, r.transform_points(X), atol=1e-9)


def test_composed_field_is_linear_then_deformable():
    """x + D total(x) = A (x + D u(x)) + t: the deformable field u found on the moving image
    resampled through the linear transform, composed into one field."""
    img = _oblique(3, (9, 10, 8))
    r = _some_transform(3, _centre(img))
    u = np.random.default_rng(3).normal(size=(3, *img.shape))
    total = compose_field(r, u, img)
    M, o = img.index_to_world()
    X = np.indices(img.shape).reshape(3, -1).T @ M.T + o
    deformed = X + (img.direction @ u.reshape(3, -1)).T
    np.testing.assert_allclose(X + (img.direction @ total.reshape(3, -1)).T, r.transform_points(deformed), atol=1e-9)


@pytest.mark.parametrize("ndim, ext", [(2, ".tfm"), (3, ".tfm"), (3, ".mat"), (2, ".txt")])
def test_itk_file_resamples_as_the_field(tmp_path, ndim, ext):
    fixed = _oblique(ndim, (40, 44) if ndim == 2 else (20, 24, 22), seed=1)
    moving = _oblique(ndim, (44, 40) if ndim == 2 else (22, 20, 24), seed=2)
    r = _some_transform(ndim, _centre(fixed))
    path = tmp_path / f"linear{ext}"
    write_itk_transform(path, r, ndim)
    tx = sitk.ReadTransform(str(path))
    ours = warp(moving, linear_to_field(r, fixed), reference=fixed).array
    theirs = sitk.GetArrayFromImage(sitk.Resample(image_to_sitk(moving), image_to_sitk(fixed), tx, sitk.sitkLinear, 0.0))
    inside = (ours != 0) & (theirs != 0)
    assert inside.mean() > 0.3
    assert np.abs(ours - theirs)[inside].mean() < 1e-3 * np.abs(theirs[inside]).mean()
    back = read_itk_transform(path, ndim)
    np.testing.assert_allclose(back.matrix, r.matrix, atol=1e-9)
    np.testing.assert_allclose(back.translation, r.translation, atol=1e-7)


def test_read_itk_transforms_written_by_simpleitk(tmp_path):
    euler = sitk.Euler2DTransform((10.0, -4.0), np.radians(15.0), (3.0, -2.0))
    sitk.WriteTransform(euler, str(tmp_path / "euler.tfm"))
    r = read_itk_transform(tmp_path / "euler.tfm", 2)
    for p in ([0.0, 0.0], [25.0, -13.0]):
        np.testing.assert_allclose(r.transform_points(p), euler.TransformPoint(p), atol=1e-9)
    assert r.kind == "rigid" and r.rotation_degrees[0] == pytest.approx(15.0)

    affine = _affine(3, _rot3(1, 9.0) @ np.diag([1.1, 1, 0.9]), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    sitk.WriteTransform(composite, str(tmp_path / "composite.h5"))
    r = read_itk_transform(tmp_path / "composite.h5", 3)
    p = [12.0, -30.0, 4.0]
    np.testing.assert_allclose(r.transform_points(p), affine.TransformPoint(p), atol=1e-9)
    assert r.kind == "affine" and r.scales[0] != pytest.approx(1.0)


def test_read_itk_transform_refusals(tmp_path):
    bspline = sitk.BSplineTransformInitializer(sitk.Image([8, 8], sitk.sitkFloat32), [2, 2])
    sitk.WriteTransform(bspline, str(tmp_path / "bspline.tfm"))
    with pytest.raises(PriorRegError, match="not a linear transform"):
        read_itk_transform(tmp_path / "bspline.tfm", 2)
    two = sitk.CompositeTransform([sitk.Euler2DTransform(), sitk.TranslationTransform(2, (1.0, 2.0))])
    sitk.WriteTransform(two, str(tmp_path / "two.h5"))
    with pytest.raises(PriorRegError, match="composite of 2 transforms"):
        read_itk_transform(tmp_path / "two.h5", 2)
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "e3.tfm"))
    with pytest.raises(PriorRegError, match="3D transform but the images are 2D"):
        read_itk_transform(tmp_path / "e3.tfm", 2)
    (tmp_path / "elastix.txt").write_text('(Transform "EulerTransform")\n(NumberOfParameters 3)\n')
    with pytest.raises(PriorRegError, match="not an ITK transform file"):
        read_itk_transform(tmp_path / "elastix.txt", 2)
    with pytest.raises(PriorRegError, match="no such file"):
        read_itk_transform(tmp_path / "missing.tfm", 2)
    flat = sitk.AffineTransform(2)
    flat.SetMatrix((0.0, 0.0, 0.0, 0.0))  # was called a reflection (det < 0), or hit an IndexError with --linear none
    sitk.WriteTransform(flat, str(tmp_path / "flat.tfm"))
    with pytest.raises(PriorRegError, match=r"singular transform \(determinant 0\)"):
        read_itk_transform(tmp_path / "flat.tfm", 2)


def test_decompose_rebuilds_every_axis_aligned_rotation():
    """The review found that a quarter turn about y (gimbal lock) decomposed into angles that rebuilt another
    rotation: the header-turn start then began 45 degrees off (8 of the 24 axis-aligned turns)."""
    import itertools

    import torch

    from priorreg.linear import _rotation
    from priorreg.transform import decompose

    n = 0
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            Q = np.zeros((3, 3))
            Q[list(range(3)), list(perm)] = signs
            if np.linalg.det(Q) < 0:
                continue
            angles = decompose(Q)[0]
            R = _rotation(torch.as_tensor(angles, dtype=torch.float64), 3).numpy()
            np.testing.assert_allclose(R, Q, atol=1e-9)
            n += 1
    assert n == 24


def test_centroids_of_a_large_grid_come_from_every_kth_voxel_and_agree(monkeypatch):
    """A CT-sized grid's centroids took 5 s of 36: above CENTROID_VOXELS they are read every k-th voxel,
    within a voxel of the whole grid's."""
    from priorreg import linear
    from priorreg.image import every_kth

    rng = np.random.default_rng(0)
    a = np.zeros((40, 50, 30))
    a[8:30, 10:35, 5:25] = 1.0
    a += 0.05 * rng.random(a.shape)
    img = Image(a, (1.2, 0.8, 2.0), (4.0, -3.0, 1.0))
    whole = linear._centroids(img, a)
    monkeypatch.setattr(linear, "CENTROID_VOXELS", 10_000)
    assert every_kth(a.shape, 10_000) == 2 and every_kth(a.shape, a.size) == 1
    sparse = linear._centroids(img, a)
    assert all(np.linalg.norm(w - s) < 2.0 for w, s in zip(whole, sparse))  # mm; voxels of 0.8-2 mm


def test_far_trial_points_sample_the_border_with_zero_gradient():
    """An affine trial step of L-BFGS put samples 1e4 image widths away and PyTorch's grid_sample backward
    crashed the process (segmentation fault, a new user's IXI pair with a prior at alpha 0.5): the points are
    clamped one voxel beyond the edge first, the same values and gradients as the border clamp."""
    from priorreg import linear

    vol = torch.arange(20.0).reshape(1, 1, 4, 5)
    idx = torch.tensor([[3e9, -2e9], [1.5, 2.0], [float("inf"), 1.0]], requires_grad=True)
    v = linear._sample(vol, idx, (4, 5))
    got = v.detach()
    assert got[0] == vol[0, 0, 3, 0] and float(got[1]) == pytest.approx(9.5) and got[2] == vol[0, 0, 3, 1]
    v.sum().backward()
    assert torch.all(idx.grad[0] == 0) and idx.grad[2, 0] == 0 and torch.all(idx.grad[1] != 0)  # inside: a gradient


@pytest.mark.skipif(not os.path.isdir(SPINE), reason="needs ../shared/data (spinal cord T1w/T2w); not present")
def test_a_slab_shifted_along_its_long_axis_is_found_not_left():
    """The cord slab's T2w moved 10 mm along the cord: MI measured only on the samples still inside the moving
    image rose as the rigid stage slid it off (its optimum kept 0 % of them, was rejected, and the world
    alignment, 10 mm off, was kept). Weighed by the share of samples inside, the shift is found."""
    import sys

    pytest.importorskip("nibabel", reason="benchmarks/cases_more.py reads the cord with nibabel (benchmarks/requirements.txt)")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        import cases_more

        c = cases_more.spine_3d(seed=1)
    except cases_more.DataNotFound as e:
        pytest.skip(str(e))
    finally:
        sys.path.pop(0)
    fixed = Image(c["fixed"], tuple(c["spacing"]))
    A, b = fixed.index_to_world()
    moving = Image(c["moving"], tuple(c["spacing"]), tuple(b - 10.0 * A[:, 2]))  # the slab 10 mm down its axis
    r = estimate_linear(fixed, moving, kind="rigid")  # (the affine stage's scales go out of bounds: prealign takes this)
    assert not r.rejected and r.overlap > 0.5
    off = r.translation + 10.0 * A[:, 2]  # (with a 4 mm smooth warp on the fixed side: no exact rigid truth)
    assert abs(off @ A[:, 2]) < 1.5 and np.linalg.norm(off) < 3.5, r.translation


def test_the_linear_stage_reads_no_prior_on_a_level_coarser_than_its_tables():
    """A run may now have more levels than its prior (the coarser run without it): the linear stage read the
    prior's coarsest table there, beside a warning saying "mutual information alone"."""
    from priorreg import fit_prior
    from priorreg.linear import _prior_term

    rng = np.random.default_rng(0)
    f = rng.random((24, 24))
    prior = fit_prior([f, f.T], [f**2, (f**2).T], levels=1)
    assert _prior_term(prior, 0, 1e-6, "kl", "cpu") is not None
    assert _prior_term(prior, 1, 1e-6, "kl", "cpu") is None and _prior_term(prior, 2, 1e-6, "kl", "cpu") is None
