"""The linear stage inside ``priorreg register`` (issue 19): a rotated and shifted pair is
recovered with the default preset, linear.tfm and field.nii.gz both reproduce warped.nii.gz
through SimpleITK, an initial transform file is used, and an aligned pair stays aligned."""
from __future__ import annotations

import json
import os
from importlib.resources import files

import numpy as np
import pytest
import SimpleITK as sitk

from priorreg import cli

BRAINWEB = files("priorreg") / "data" / "brainweb"
ANGLE_DEG, SHIFT_MM = 9.0, (7.0, -5.0)


def _grey(path):
    img = sitk.ReadImage(str(path))
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = sitk.VectorIndexSelectionCast(img, 0)
    return sitk.Cast(img, sitk.sitkFloat32)


def _rigid(angle_deg, shift, center):
    tx = sitk.Euler2DTransform()
    tx.SetCenter(center)
    tx.SetAngle(np.radians(angle_deg))
    tx.SetTranslation(shift)
    return tx


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """T1 fixed; PD moved by a known rigid transform (fixed point x -> moving point T(x))."""
    d = tmp_path_factory.mktemp("linear_stage")
    t1, pd = (_grey(BRAINWEB / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    center = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()])
    truth = _rigid(ANGLE_DEG, SHIFT_MM, center)
    # the moving image shows PD where the fixed anatomy sits at truth^-1: resample PD through the inverse
    moved = sitk.Resample(pd, pd, truth.GetInverse(), sitk.sitkLinear, 0.0)
    paths = {"fixed": str(d / "t1.nii.gz"), "moving": str(d / "pd_moved.nii.gz"), "aligned": str(d / "pd.nii.gz")}
    sitk.WriteImage(t1, paths["fixed"])
    sitk.WriteImage(moved, paths["moving"])
    sitk.WriteImage(pd, paths["aligned"])
    return d, paths, truth


def _run(args):
    assert cli.main(args) == 0


def _brain(fixed_path):
    a = sitk.GetArrayFromImage(sitk.ReadImage(fixed_path))
    return a > 0.2 * a.max()


def test_register_recovers_a_rigid_offset_and_writes_one_field(pair):
    d, p, truth = pair
    out = str(d / "run")
    _run(["register", p["fixed"], p["moving"], "--out", out, "--max-iterations", "0", "--quiet"])
    with open(os.path.join(out, "report.json")) as fh:
        rec = json.load(fh)
    lin = rec["linear"]
    assert lin["kind"] == "affine"
    assert abs(abs(lin["rotation_degrees"][0]) - ANGLE_DEG) < 0.5
    assert abs(lin["rotation_angle_degrees"] - ANGLE_DEG) < 0.5  # the whole rotation, as the summary line gives it
    fixed = sitk.ReadImage(p["fixed"])
    moving = sitk.ReadImage(p["moving"])
    warped = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "warped.nii.gz")))
    brain = _brain(p["fixed"])
    # the linear transform file alone, and the one displacement field, both reproduce warped.nii.gz
    via_tfm = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.ReadTransform(os.path.join(out, "linear.tfm")),
                                                   sitk.sitkLinear, 0.0))
    fld = sitk.DisplacementFieldTransform(sitk.ReadImage(os.path.join(out, "field.nii.gz"), sitk.sitkVectorFloat64))
    via_field = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, fld, sitk.sitkLinear, 0.0))
    scale = float(np.abs(warped[brain]).mean())
    assert np.abs(via_tfm - warped)[brain].mean() < 0.01 * scale
    assert np.abs(via_field - warped)[brain].mean() < 0.01 * scale
    # and the recovered transform is the known one, to under half a pixel over the brain
    rec_tx = sitk.ReadTransform(os.path.join(out, "linear.tfm"))
    idx = np.argwhere(brain)[:, ::-1].astype(float)  # (x, y) indices of brain pixels
    pts = [fixed.TransformContinuousIndexToPhysicalPoint(list(q)) for q in idx[::25]]
    err = [np.linalg.norm(np.subtract(rec_tx.TransformPoint(q), truth.TransformPoint(q))) for q in pts]
    assert max(err) < 0.5


def test_initial_transform_file_is_used_as_given_with_linear_none(pair):
    d, p, truth = pair
    tfm = str(d / "truth.tfm")
    sitk.WriteTransform(truth, tfm)
    out = str(d / "given")
    _run(["register", p["fixed"], p["moving"], "--out", out, "--linear", "none", "--initial-transform", tfm,
          "--max-iterations", "0", "--quiet"])
    fixed, moving = sitk.ReadImage(p["fixed"]), sitk.ReadImage(p["moving"])
    expect = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, truth, sitk.sitkLinear, 0.0))
    warped = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "warped.nii.gz")))
    brain = _brain(p["fixed"])
    assert np.abs(expect - warped)[brain].mean() < 0.01 * float(np.abs(expect[brain]).mean())


def test_an_aligned_pair_stays_aligned(pair):
    d, p, _ = pair
    out = str(d / "aligned")
    _run(["register", p["fixed"], p["aligned"], "--out", out, "--max-iterations", "0", "--quiet"])
    fld = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "field.nii.gz")))
    brain = _brain(p["fixed"])
    assert np.sqrt((fld ** 2).sum(-1))[brain].max() < 0.5  # mm = pixels here


def test_an_image_registered_to_itself_keeps_the_start_without_a_note(pair):
    """Its MIND distance is 0 at the start and 1e-4 a hair away: a new user read that the optimum "worsened the
    MIND descriptor distance (0.0001 vs 0.0000)"; a rejection that moves nothing is not worth a note."""
    from priorreg.linear import estimate_linear
    from priorreg import io as pio

    t1 = pio.read_image(pair[1]["fixed"])
    lin = estimate_linear(t1, t1)
    assert not lin.notes and not lin.rejected
    assert np.abs(lin.matrix - np.eye(2)).max() < 1e-3 and np.abs(lin.translation).max() < 0.05


def test_a_bad_transform_file_is_one_line(pair, capsys):
    d, p, _ = pair
    bad = d / "bad.tfm"
    bad.write_text("not a transform\n")
    assert cli.main(["register", p["fixed"], p["moving"], "--out", str(d / "bad"), "--initial-transform", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("priorreg: error:") and not os.path.exists(d / "bad")


def test_the_report_shows_the_linear_stage(pair):
    d, p, _ = pair
    out = d / "run"  # written by the first test of this module
    if not (out / "report.html").exists():
        _run(["register", p["fixed"], p["moving"], "--out", str(out), "--max-iterations", "0", "--quiet"])
    page = (out / "report.html").read_text()
    assert "after the affine stage</div>" in page and "linear stage (affine): rotation" in page
    assert " deg" in page and "translation (world LPS)" in page


def test_ants_reads_linear_tfm_and_field(pair):
    ants = pytest.importorskip("ants")  # in the test extra: runs in CI
    d, p, _ = pair
    out = d / "run"
    if not (out / "linear.tfm").exists():
        _run(["register", p["fixed"], p["moving"], "--out", str(out), "--max-iterations", "0", "--quiet"])
    fixed, moving = ants.image_read(p["fixed"]), ants.image_read(p["moving"])
    warped = ants.image_read(str(out / "warped.nii.gz")).numpy()
    brain = _brain(p["fixed"]).T  # ANTsPy arrays are (x, y)
    scale = float(np.abs(warped[brain]).mean())
    for transform in ("linear.tfm", "field.nii.gz"):
        via = ants.apply_transforms(fixed, moving, [str(out / transform)]).numpy()
        assert np.abs(via - warped)[brain].mean() < 0.01 * scale, transform


def test_small_images_and_conflicting_starts():
    import priorreg

    g = np.zeros((28, 28))
    g[8:20, 6:18] = 1.0
    r = priorreg.register(g, 1 - g, levels=1, max_iterations=2)  # the linear stage follows levels
    assert r.linear is not None and r.field.shape == (2, 28, 28)
    with pytest.raises(priorreg.PriorRegError, match="initial_field or initial_transform, not both"):
        priorreg.register(g, 1 - g, initial_field=np.zeros((2, 28, 28)), initial_transform="t.tfm")
    # A linear stage asked for by name beside initial_field was dropped without a word; by the preset, silently.
    r = priorreg.register(g, 1 - g, levels=1, max_iterations=2, initial_field=np.zeros((2, 28, 28)), linear="affine", warn=False)
    assert r.linear is None and "register(): linear='affine' is not run: initial_field= starts the deformable stage" in r.warnings[0]
    r = priorreg.register(g, 1 - g, levels=1, max_iterations=2, initial_field=np.zeros((2, 28, 28)), warn=False)
    assert not any("is not run" in w for w in r.warnings)


def test_images_that_do_not_overlap_are_aligned_by_their_centres_or_refused(pair, capsys):
    """A moving image whose origin lies 300 mm away: the linear stage's centre start finds it (the MIND
    check, which had no common voxel to compare with world alignment, no longer sends it back there; the
    report's picture of the unregistered pair, an empty image, is drawn); without the linear stage there is
    nothing to register: one clear error, not a traceback (it was an IndexError) or a blank result."""
    import priorreg
    from priorreg.io import read_image

    d, paths, _ = pair
    far = sitk.ReadImage(paths["aligned"])
    far.SetOrigin((300.0, 0.0))
    sitk.WriteImage(far, str(d / "pd_far.nii.gz"))
    _run(["register", paths["fixed"], str(d / "pd_far.nii.gz"), "--out", str(d / "far"), "--quiet"])
    rep = json.loads((d / "far" / "report.json").read_text())
    assert abs(rep["linear"]["translation_mm"][0] - 300.0) < 1.0 and abs(rep["linear"]["translation_mm"][1]) < 1.0
    said = capsys.readouterr().err  # --quiet still prints warnings: the header's origin is named
    assert "found the anatomy 300.0 mm away: an origin in a header is likely wrong" in said, said
    assert cli.main(["register", paths["fixed"], str(d / "pd_far.nii.gz"), "--out", str(d / "none"), "--linear", "none"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the images do not overlap" in err[0]
    with pytest.raises(priorreg.PriorRegError, match=r"only 0% of the fixed image's foreground falls inside the moving image "
                                                      r"under their world alignment"):
        priorreg.register(read_image(paths["fixed"]), read_image(str(d / "pd_far.nii.gz")), linear="none", warn=False)


@pytest.mark.parametrize("turn_deg", [180, 90])
def test_a_header_that_turns_the_moving_image_is_found_and_named(turn_deg):
    """A moving header whose direction says the image is turned (voxels stored like the fixed image's) put
    the anatomy 90 or 180 degrees round in world space; the search tried 20 degrees and returned a wrong
    alignment without a word. Now the voxel axes are tried as aligned too, and the warning names the header.
    The same world image stored turned (voxels and header together) is registered as before, with no warning."""
    import warnings

    import priorreg
    from priorreg import io as pio
    from priorreg.transform import rotation_angle

    f, m = (pio.read_image(BRAINWEB / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    a = np.radians(turn_deg)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    kw = dict(levels=2, max_iterations=5)
    plain = priorreg.register(f, m, warn=False, **kw)
    wrong_header = priorreg.Image(m.array, m.spacing, m.origin, R @ np.asarray(m.direction))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = priorreg.register(f, wrong_header, **kw)
    assert abs(rotation_angle(r.linear.matrix) - turn_deg) < 3
    err = np.abs(r.warped.array - plain.warped.array).mean() / np.abs(plain.warped.array).mean()
    assert err < 0.02, err  # without the voxel-axes start: 0.17-0.18
    said = [str(w.message) for w in caught if "header" in str(w.message)]
    assert len(said) == 1 and f"differ by {turn_deg} degrees" in said[0] and "likely wrong" in said[0]
    # stored turned, header and voxels together: the same world image
    k = turn_deg // 90
    D = np.asarray(m.direction) * np.asarray(m.spacing)[None, :]
    arr, origin, sp = m.array, np.asarray(m.origin, float), np.asarray(m.spacing, float)
    for _ in range(k):  # one quarter turn of the array: new axis 0 = old axis 1 reversed, new axis 1 = old axis 0
        origin = origin + D[:, 1] * (arr.shape[1] - 1)
        arr, D, sp = np.rot90(arr), np.stack([-D[:, 1], D[:, 0]], 1), sp[::-1]
    same = priorreg.Image(np.ascontiguousarray(arr), tuple(sp), tuple(origin), D / sp[None, :])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = priorreg.register(f, same, **kw)
    assert rotation_angle(s.linear.matrix) < 3 and not [w for w in caught if "header" in str(w.message)]
    err = np.abs(s.warped.array - plain.warped.array).mean() / np.abs(plain.warped.array).mean()
    assert err < 0.02, err


@pytest.mark.parametrize("rows", [(62, 138), (0, 110)])
def test_a_moving_band_is_registered_where_it_has_data(rows):
    """A band of the PD slice's rows, shifted by 3 mm: beyond the band the resampled moving image repeats its
    edge rows, which the deformable stage matched as anatomy (mean error in the band 0.44-0.57 mm); sampling
    only where the moving image has data, it stays near the truth."""
    from priorreg import Image, io, register

    fixed, pd = (io.read_image(BRAINWEB / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    lo, hi = rows
    shift = 3.0
    band = Image(np.ascontiguousarray(pd.array[lo:hi]), pd.spacing, (shift, lo + shift))
    r = register(fixed, band, warn=False)
    assert any("covers only" in w for w in r.warnings)
    rr = np.arange(fixed.shape[0])[:, None]
    inside = (rr >= lo + 2) & (rr <= hi - 3) & (fixed.array > 10)
    error = np.hypot(r.field[0] - shift, r.field[1] - shift)[inside]
    assert error.mean() < 0.4


def test_a_moving_image_that_covers_the_fixed_anatomy_keeps_its_samples():
    """The deformable stage's mask is left alone where the moving image misses none of the fixed anatomy."""
    from priorreg import Image, io
    from priorreg.checks import validate
    from priorreg.prealign import inside_moving

    fixed, pd = (io.read_image(BRAINWEB / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    moved = Image(pd.array, pd.spacing, (2.0, 2.0))  # its empty rim leaves the fixed grid's, not the anatomy
    assert inside_moving(validate(fixed, moved), None).mask is None
    band = Image(np.ascontiguousarray(pd.array[62:138]), pd.spacing, (0.0, 62.0))
    cut = inside_moving(validate(fixed, band), None).mask
    assert cut is not None and 0.2 < cut.mean() < 0.4 and cut[100, 90] == 1 and cut[20, 90] == 0


def test_a_thin_moving_band_is_cut_wherever_it_lies():
    """A band of 4 rows: cut one row in from its edge it keeps 2, which the coarsest level (every 4th row) missed at
    some offsets, and the samples beyond the band came back there (a review: 'cut' or not by where the slab sat);
    the band's own rows are used then."""
    from priorreg import Image, io
    from priorreg.checks import validate
    from priorreg.prealign import inside_moving

    fixed, pd = (io.read_image(BRAINWEB / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    for k0 in range(100, 104):
        band = Image(np.ascontiguousarray(pd.array[k0:k0 + 4]), pd.spacing, (0.0, float(k0)))
        cut = inside_moving(validate(fixed, band, overrides=dict(levels=3)), None)
        assert cut.mask is not None and cut.mask_is_fov, k0
        assert 2 <= cut.mask[:, 90].sum() <= 4


def test_the_nearly_aligned_rule_reads_the_anatomy_inside_a_field_of_view_mask():
    """Where the mask is only the moving image's field of view (background included), the coarser levels'
    move is measured on the fixed anatomy in it, as without a mask, not on the background."""
    from types import SimpleNamespace

    import torch

    from priorreg.deformable import coarse_displacement

    f = np.zeros((40, 40))
    f[10:30, 10:30] = 1.0
    u = torch.zeros((2, 40, 40), dtype=torch.float64)
    u[0][f == 0] = 1.0  # the background moved by a voxel, the anatomy not at all
    pyr = SimpleNamespace(fixed=[torch.as_tensor(f)], mask=[torch.ones((40, 40))])
    fixed = SimpleNamespace(spacing=(1.0, 1.0))
    fov = SimpleNamespace(initial_field=None, fixed=fixed, mask_is_fov=True)
    user = SimpleNamespace(initial_field=None, fixed=fixed, mask_is_fov=False)
    assert coarse_displacement(fov, pyr, u) == 0.0
    assert coarse_displacement(user, pyr, u) > 0.5
