"""The outputs of `priorreg register` used by other tools, and bad NIfTI input, through the CLI.

The README's interop snippet,

    sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(sitk.ReadImage("field.nii.gz", sitk.sitkVectorFloat64)),
                  outputPixelType=sitk.sitkFloat32)
    ants.apply_transforms(fixed, moving, ["field.nii.gz"])

must reproduce warped.nii.gz on single-slice 3D NIfTI (how BrainWeb and IXI slices ship: the
outputs must stay X x Y x 1 with the input's 3D geometry) and on a 3D volume whose moving image
covers only part of the fixed one (0 outside the moving field of view, as ITK and ANTs fill).
ANTsPy is in the test extra; without it those checks skip.
"""
import hashlib
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

import priorreg
import synthetic
from priorreg import cli
from priorreg import io as pio

FAST = ["--levels", "1", "--max-iterations", "5"]
OUTPUTS = ("warped.nii.gz", "field.nii.gz", "jacobian.nii.gz", "report.json", "report.html")


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def rot_z(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def write_sitk(arr, path, spacing, origin, direction):
    """Write a NumPy (z, y, x) array with an ITK geometry (spacing/origin in x, y, z; direction row-major)."""
    s = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    s.SetSpacing(spacing)
    s.SetOrigin(origin)
    s.SetDirection(np.asarray(direction, float).ravel().tolist())
    sitk.WriteImage(s, str(path), True)
    return path


def continuous_index(field_path, moving_path):
    """For each voxel of the field's (fixed) grid: the moving image's continuous ITK index it samples."""
    disp = sitk.ReadImage(str(field_path), sitk.sitkVectorFloat64)
    mov = sitk.ReadImage(str(moving_path))
    vec = sitk.GetArrayFromImage(disp).reshape(-1, 3)
    idx = np.indices(disp.GetSize()[::-1]).reshape(3, -1)[::-1].T  # ITK (i, j, k) per voxel, NumPy order
    D = np.asarray(disp.GetDirection()).reshape(3, 3)
    pts = np.asarray(disp.GetOrigin()) + (D @ (np.asarray(disp.GetSpacing()) * idx).T).T + vec
    Dm = np.asarray(mov.GetDirection()).reshape(3, 3)
    ci = (np.linalg.inv(Dm) @ (pts - np.asarray(mov.GetOrigin())).T).T / np.asarray(mov.GetSpacing())
    return ci, np.asarray(mov.GetSize()), disp


def compare_regions(field_path, moving_path, fixed_path, eps=1e-3):
    """Masks (on the fixed file's array) of voxels clearly inside / clearly outside the moving field of view.

    ITK counts a point inside when its continuous index lies in [-0.5, n - 0.5); points within
    ``eps`` of that border are left out (a tie may go either way)."""
    ci, size, disp = continuous_index(field_path, moving_path)
    inside = np.all((ci >= -0.5 + eps) & (ci <= size - 0.5 - eps), axis=1)
    outside = np.any((ci < -0.5 - eps) | (ci > size - 0.5 + eps), axis=1)
    # The field may be stored with its index axes in another order than the fixed image: map by world point.
    fixed = sitk.ReadImage(str(fixed_path))
    fidx = np.array(
        [fixed.TransformPhysicalPointToIndex(disp.TransformIndexToPhysicalPoint([int(v) for v in i]))
         for i in np.indices(disp.GetSize()[::-1]).reshape(3, -1)[::-1].T]
    )
    shape = fixed.GetSize()[::-1]
    m_in, m_out = np.zeros(shape, bool), np.zeros(shape, bool)
    m_in[fidx[:, 2], fidx[:, 1], fidx[:, 0]] = inside
    m_out[fidx[:, 2], fidx[:, 1], fidx[:, 0]] = outside
    return m_in, m_out


def check_interop(out_dir, fixed_path, moving_path, tmp_path, min_inside=0.3, min_outside=0.0):
    """The README snippet (SimpleITK, and ANTsPy where installed) against warped.nii.gz."""
    field = os.path.join(out_dir, "field.nii.gz")
    warped_img = sitk.ReadImage(os.path.join(out_dir, "warped.nii.gz"))
    fixed, moving = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(moving_path))
    # Same dimensionality and grid as the fixed input.
    assert warped_img.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(warped_img.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(warped_img.GetSpacing(), fixed.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(warped_img.GetDirection(), fixed.GetDirection(), atol=1e-5)
    warped = sitk.GetArrayFromImage(warped_img)
    m_in, m_out = compare_regions(field, moving_path, fixed_path)
    assert m_in.mean() > min_inside and m_out.mean() >= min_outside, (m_in.mean(), m_out.mean())

    # SimpleITK, exactly as in the README.
    out = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(sitk.ReadImage(field, sitk.sitkVectorFloat64)),
                        outputPixelType=sitk.sitkFloat32)
    got = sitk.GetArrayFromImage(out)
    assert got.shape == warped.shape
    np.testing.assert_allclose(got[m_in], warped[m_in], atol=1e-4)
    np.testing.assert_array_equal(got[m_out], 0)
    np.testing.assert_array_equal(warped[m_out], 0)
    moved = np.abs(warped[m_in] - sitk.GetArrayFromImage(sitk.Resample(moving, fixed))[m_in]).max()
    assert moved > 1e-3  # the field does move things: the comparison is not trivially true

    try:
        import ants
    except ImportError:
        return "no ants"
    res = ants.apply_transforms(ants.image_read(str(fixed_path)), ants.image_read(str(moving_path)), [field])
    res.to_file(str(tmp_path / "ants.nii.gz"))
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ants.nii.gz")))
    assert got.shape == warped.shape
    np.testing.assert_allclose(got[m_in], warped[m_in], atol=1e-3)
    np.testing.assert_array_equal(got[m_out], 0)
    return "ants"


# --------------------------------------------------------------------------- single-slice 3D NIfTI


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_single_slice_nifti_outputs_stay_3d_and_interop_holds(tmp_path, capsys, plane):
    fixed, moving, _, _ = synthetic.case((48, 40), synthetic.T2_MONO, max_disp=2.5)
    if plane == "axial":  # X x Y x 1 (the case ITK's NIfTI vector reader would make 2D), rotated in-plane
        shape = (1, 48, 40)
        geo = dict(spacing=(0.9, 1.2, 3.0), origin=(5.0, -2.0, 7.5), direction=rot_z(0.3))
    else:  # 1 x Y x Z
        shape = (48, 40, 1)
        geo = dict(spacing=(2.5, 1.1, 0.9), origin=(-4.0, 3.0, 1.0), direction=np.eye(3)[:, [0, 2, 1]] * [1, 1, -1])
    f = write_sitk(fixed.reshape(shape), tmp_path / "f.nii.gz", **geo)
    m = write_sitk(moving.reshape(shape), tmp_path / "m.nii.gz", **geo)
    before = digest(f), digest(m)
    out = tmp_path / "out"
    rc, _, err = run(capsys, "register", f, m, "--out", out, *FAST)
    assert rc == 0, err
    assert (digest(f), digest(m)) == before
    for name in ("warped.nii.gz", "jacobian.nii.gz"):
        assert sitk.ReadImage(str(out / name)).GetSize() == sitk.ReadImage(str(f)).GetSize(), name
    disp = sitk.ReadImage(str(out / "field.nii.gz"), sitk.sitkVectorFloat64)
    assert disp.GetDimension() == 3 and disp.GetNumberOfComponentsPerPixel() == 3
    vec = sitk.GetArrayFromImage(disp).reshape(-1, 3)
    normal = np.cross(*np.asarray(geo["direction"]).T[[0, 1] if plane == "axial" else [1, 2]])
    np.testing.assert_allclose(vec @ normal, 0, atol=1e-9)  # no through-plane displacement
    assert np.abs(vec).max() > 0.05
    check_interop(out, f, m, tmp_path)

    # priorreg apply reads the 3-component single-slice field back and reproduces warped.nii.gz.
    rc, so, err = run(capsys, "apply", m, "--field", out / "field.nii.gz", "--reference", f, "--out", tmp_path / "again.nii.gz")
    assert rc == 0, err
    assert "a single-slice 3D grid" in so  # what it writes (it said "2D 48x40")
    again = sitk.ReadImage(str(tmp_path / "again.nii.gz"))
    assert again.GetSize() == sitk.ReadImage(str(f)).GetSize()
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"))), atol=1e-5
    )


def test_single_slices_in_parallel_planes_get_a_field_itk_applies_and_other_planes_are_refused(tmp_path, capsys):
    """A moving slice 6 mm from the fixed slice's plane: field.nii.gz pointed into the fixed plane, where
    the moving file has no data (SimpleITK's resample was all zero); a sagittal against an axial slice was
    registered as if their 2D world axes were the same."""
    fixed, moving, _, _ = synthetic.case((48, 40), synthetic.T2_MONO, max_disp=2.5)
    geo = dict(spacing=(0.9, 1.2, 3.0), origin=(5.0, -2.0, 7.5), direction=rot_z(0.3))
    f = write_sitk(fixed.reshape(1, 48, 40), tmp_path / "f.nii.gz", **geo)
    m = write_sitk(moving.reshape(1, 48, 40), tmp_path / "m.nii.gz", **dict(geo, origin=(5.0, -2.0, 13.5)))
    out = tmp_path / "out"
    rc, _, err = run(capsys, "register", f, m, "--out", out, *FAST)
    assert rc == 0, err
    vec = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "field.nii.gz"), sitk.sitkVectorFloat64)).reshape(-1, 3)
    np.testing.assert_allclose(vec[:, 2], 6.0, atol=1e-5)  # to the moving slice's plane
    check_interop(out, f, m, tmp_path)  # SimpleITK's resample through the field reproduces warped.nii.gz
    tx = sitk.ReadTransform(str(out / "linear.tfm"))
    assert tx.TransformPoint((5.0, -2.0, 7.5))[2] == pytest.approx(13.5)
    again = priorreg.register(pio.read_image(f), pio.read_image(m), levels=1, max_iterations=0, linear="none",
                              warn=False, initial_transform=str(out / "linear.tfm"))  # read back in-plane
    assert again.linear is not None
    rc, _, err = run(capsys, "apply", m, "--field", out / "field.nii.gz", "--reference", f, "--out", tmp_path / "b.nii.gz")
    assert rc == 0, err  # the plane-to-plane shift is left out in 2D, as the registration left it
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b.nii.gz"))),
                               sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"))), atol=1e-5)
    bent = sitk.ReadImage(str(out / "field.nii.gz"), sitk.sitkVectorFloat64)
    arr = sitk.GetArrayFromImage(bent)
    arr.reshape(-1, 3)[:100, 2] += 1.0  # through-plane displacements that vary: not a single-slice field
    again_img = sitk.GetImageFromArray(arr, isVector=True)
    again_img.CopyInformation(bent)
    sitk.WriteImage(again_img, str(tmp_path / "bent.nii.gz"))
    rc, _, err = run(capsys, "apply", m, "--field", tmp_path / "bent.nii.gz", "--reference", f, "--out", tmp_path / "c.nii.gz")
    assert rc == 2 and "whose through-plane displacements vary (6 to 7 mm)" in err
    elsewhere = write_sitk(moving.reshape(1, 48, 40), tmp_path / "m2.nii.gz", **dict(geo, origin=(5.0, -2.0, 9.5)))
    rc, _, err = run(capsys, "apply", elsewhere, "--field", out / "field.nii.gz", "--reference", f, "--out", tmp_path / "d.nii.gz")
    assert rc == 2 and "made for a moving slice 6 mm from the reference's plane" in err and "lies 2 mm from it" in err
    assert not (tmp_path / "d.nii.gz").exists()
    rc, _, err = run(capsys, "train", "--fixed", f, "--moving", m, "--out", tmp_path / "p.npz", "--levels", "1")
    assert rc == 2 and "not on one grid" in err and "slice plane across world z (axial) at 7.5 mm vs" in err

    sagittal = write_sitk(moving.reshape(48, 40, 1), tmp_path / "s.nii.gz", spacing=(2.5, 1.1, 0.9),
                          origin=(-4.0, 3.0, 1.0), direction=np.eye(3)[:, [0, 2, 1]] * [1, 1, -1])
    rc, _, err = run(capsys, "register", f, sagittal, "--out", tmp_path / "no", *FAST)
    assert rc == 2 and "fixed is a single slice across world z (axial), moving one across world x (sagittal)" in err
    assert not (tmp_path / "no").exists()
    rc, _, err = run(capsys, "apply", sagittal, "--field", out / "field.nii.gz", "--reference", f, "--out", tmp_path / "a.nii.gz")
    assert rc == 2 and "reference is a single slice across world z (axial), moving one across world x" in err


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_single_slice_linear_transform_is_3d_and_reproduced_by_sitk(tmp_path, plane):
    """linear.tfm of a single-slice 3D pair was a 2D transform, which ITK cannot apply to the 3D files."""
    from priorreg.transform import linear_to_field
    from priorreg.workflow import write_outputs

    fixed, moving, _, _ = synthetic.case((48, 40), synthetic.T2_MONO, max_disp=0.5)
    moving = np.roll(moving, (2, -1), axis=(0, 1))  # an in-plane shift for the linear stage
    shape, geo = ((1, 48, 40), dict(spacing=(0.9, 1.2, 3.0), origin=(5.0, -2.0, 7.5), direction=rot_z(0.3))) \
        if plane == "axial" else ((48, 40, 1), dict(spacing=(2.5, 1.1, 0.9), origin=(-4.0, 3.0, 1.0),
                                                   direction=np.eye(3)[:, [0, 2, 1]] * [1, 1, -1]))
    f = write_sitk(fixed.reshape(shape), tmp_path / "f.nii.gz", **geo)
    m = write_sitk(moving.reshape(shape), tmp_path / "m.nii.gz", **geo)
    fi, mi = pio.read_image(f), pio.read_image(m)
    r = priorreg.register(fi, mi, levels=1, max_iterations=3, linear="rigid", warn=False)
    assert max(abs(t) for t in r.linear.translation_mm) > 1.0
    write_outputs(tmp_path / "out", r)
    tx = sitk.ReadTransform(str(tmp_path / "out" / "linear.tfm"))
    assert tx.GetDimension() == 3
    import json  # report.json (and report.html) gave the 2D in-plane frame's numbers under "world LPS"

    rec = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["linear"]
    np.testing.assert_allclose(rec["matrix"], np.array(tx.GetMatrix()).reshape(3, 3), atol=1e-9)
    assert len(rec["translation_mm"]) == 3 and rec["center"] == pytest.approx(list(tx.GetCenter()))
    html_text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert ", ".join(f"{x + 0.0:.2f} mm" for x in np.round(rec["translation_mm"], 2)) in html_text
    by_sitk = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(m)), sitk.ReadImage(str(f)), tx, sitk.sitkLinear, 0.0))
    ours = priorreg.warp(mi, linear_to_field(r.linear, fi), reference=fi).array
    np.testing.assert_allclose(by_sitk.reshape(ours.shape)[4:-4, 4:-4], ours[4:-4, 4:-4], atol=1e-4)

    # ... and priorreg reads its own 3D linear.tfm back as the 2D transform it wrote (it refused it).
    again = priorreg.register(fi, mi, levels=1, max_iterations=0, linear="none", warn=False,
                              initial_transform=str(tmp_path / "out" / "linear.tfm"))
    np.testing.assert_allclose(again.linear.matrix, r.linear.matrix, atol=1e-9)
    np.testing.assert_allclose(again.linear.translation, r.linear.translation, atol=1e-6)
    assert not [w for w in again.warnings if "plane" in w]
    shifted = sitk.TranslationTransform(3, [5.0 if plane == "sagittal" else 0.0, 0.0, 5.0 if plane == "axial" else 0.0])
    sitk.WriteTransform(shifted, str(tmp_path / "shifted.tfm"))  # 5 mm through the plane: dropped silently
    with pytest.warns(priorreg.PriorRegWarning, match=r"moves the fixed slice's plane 5 mm along world [xz], but the "
                                                      r"moving slice lies 0 mm from it; .* only the transform's part within"):
        priorreg.register(fi, mi, levels=1, max_iterations=0, linear="none", initial_transform=str(tmp_path / "shifted.tfm"))
    far = dict(geo, origin=tuple(o + 5.0 * (k == (2 if plane == "axial" else 0)) for k, o in enumerate(geo["origin"])))
    apart = pio.read_image(write_sitk(moving.reshape(shape), tmp_path / "apart.nii.gz", **far))  # 5 mm away
    sitk.WriteTransform(sitk.TranslationTransform(3), str(tmp_path / "none.tfm"))  # moves nothing: nothing dropped
    r = priorreg.register(fi, apart, levels=1, max_iterations=0, linear="none", warn=False,
                          initial_transform=str(tmp_path / "none.tfm"))
    assert not [w for w in r.warnings if "moves the fixed slice's plane" in w] and "lies 5.0 mm from" in " ".join(r.warnings)
    from priorreg import report  # linear.tfm carries the 5 mm; the report's row says what they are

    rows = dict(report._linear_rows(r.linear_in_files(), report._linear_name(r), report._slice_gap(r)))
    assert f"(5 mm of it along world {'z' if plane == 'axial' else 'x'}: the distance between the slices' planes)" in \
        rows["initial transform: translation (world LPS)"]
    tilted = sitk.AffineTransform(3)
    tilted.SetMatrix([1, 0, 0, 0, 0.9, -0.3, 0, 0.3, 0.9] if plane == "axial" else [0.9, -0.3, 0, 0.3, 0.9, 0, 0, 0, 1])
    sitk.WriteTransform(tilted, str(tmp_path / "tilted.tfm"))  # takes points out of the plane
    with pytest.raises(priorreg.PriorRegError, match="moves points out of the images' plane"):
        priorreg.register(fi, mi, levels=1, max_iterations=0, linear="none", warn=False,
                          initial_transform=str(tmp_path / "tilted.tfm"))


def test_single_slice_field_convention_with_a_large_field(tmp_path):
    """write_field on a single-slice grid (a large known field, moving on another in-plane grid)."""
    lab = synthetic.anatomy((40, 44), seed=3)
    img = synthetic.contrast(lab, synthetic.T1).astype(np.float32)
    f = write_sitk(np.zeros((1, 36, 30)), tmp_path / "f.nii.gz", (1.1, 0.9, 2.0), (3.0, -1.0, 4.0), rot_z(0.4))
    m = write_sitk(img[None], tmp_path / "m.nii.gz", (1.0, 1.0, 2.0), (-2.0, -6.0, 4.0), rot_z(0.1))
    fixed, moving = pio.read_image(f), pio.read_image(m)
    assert fixed.ndim == 2 and fixed.volume is not None
    v = synthetic.smooth_field(fixed.shape, 4.0, seed=7)  # up to 4 mm along the fixed array axes
    warped = priorreg.warp(moving, v, reference=fixed)
    out = tmp_path / "out"
    out.mkdir()
    pio.write_image(warped.with_array(warped.array.astype(np.float32)), out / "warped.nii.gz")
    pio.write_field(np.einsum("ij,j...->...i", fixed.direction, v), fixed, out / "field.nii.gz")
    back, grid, _ = pio.read_field(out / "field.nii.gz")
    np.testing.assert_allclose(back, v, atol=1e-6)
    assert grid.same_grid(fixed)
    check_interop(out, f, m, tmp_path, min_inside=0.5, min_outside=0.01)


# --------------------------------------------------------------------------- 3D, moving covers part of fixed


def test_3d_partial_field_of_view_interop(tmp_path, capsys):
    shape = (20, 24, 22)
    fixed, moving, _, _ = synthetic.case(shape, synthetic.T2_MONO, max_disp=1.5, seed=4)
    R = rot_z(0.2) @ np.array([[1, 0, 0], [0, np.cos(0.15), -np.sin(0.15)], [0, np.sin(0.15), np.cos(0.15)]])
    sp = (1.2, 1.0, 1.5)  # x, y, z
    f = write_sitk(fixed, tmp_path / "f.nii.gz", sp, (10.0, -4.0, 2.0), R)
    # The moving image: the central part of the other contrast (its own origin), about 55 % of the fixed grid.
    z0, y0, x0 = 3, 4, 5
    part = moving[z0 : z0 + 14, y0 : y0 + 18, x0 : x0 + 15]
    origin_m = np.asarray((10.0, -4.0, 2.0)) + R @ (np.asarray(sp) * (x0, y0, z0))
    m = write_sitk(part, tmp_path / "m.nii.gz", sp, tuple(origin_m), R)
    out = tmp_path / "out"
    rc, _, err = run(capsys, "register", f, m, "--out", out, *FAST)
    assert rc == 0, err
    check_interop(out, f, m, tmp_path, min_inside=0.3, min_outside=0.2)


# --------------------------------------------------------------------------- bad NIfTI through the CLI


def assert_cli_error(capsys, argv, match, inputs, out):
    hashes = [digest(p) for p in inputs]
    rc, so, err = run(capsys, *argv)
    assert rc == 2, (rc, so, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("priorreg: error: "), err
    assert match in lines[0], lines[0]
    assert [digest(p) for p in inputs] == hashes  # inputs untouched
    assert not os.path.exists(out) or not os.listdir(out)  # no partial output
    return lines[0]


def test_cli_refuses_nan_and_truncated_nifti(tmp_path, capsys):
    fixed, moving, _, _ = synthetic.case((40, 36), synthetic.T2_MONO)
    f = write_sitk(fixed[None], tmp_path / "f.nii.gz", (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    half = moving.copy()
    half[:20] = np.nan
    h = write_sitk(half[None], tmp_path / "half.nii.gz", (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    a = write_sitk(np.full((1, 40, 36), np.nan), tmp_path / "allnan.nii.gz", (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    out = tmp_path / "out"
    line = assert_cli_error(capsys, ["register", f, h, "--out", out], "NaN", [f, h], out)
    assert "half.nii.gz" in line and "720 NaN" in line
    line = assert_cli_error(capsys, ["register", f, a, "--out", out], "NaN", [f, a], out)
    assert "constant" not in line
    m = write_sitk(moving[None], tmp_path / "m.nii.gz", (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    data = m.read_bytes()
    for ext in (".nii.gz", ".nii"):
        src = m if ext == ".nii.gz" else write_sitk(moving[None], tmp_path / "m.nii", (1.0,) * 3, (0, 0, 0), np.eye(3))
        data = src.read_bytes()
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(data[: int(0.6 * len(data))])
        assert_cli_error(capsys, ["register", f, cut, "--out", out], "damaged or truncated", [f, cut], out)


def test_cli_outputs_get_the_umask_mode(tmp_path, capsys):
    fixed, moving, _, _ = synthetic.case((40, 36), synthetic.T2_MONO)
    f = write_sitk(fixed[None], tmp_path / "f.nii.gz", (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    m = write_sitk(moving[None], tmp_path / "m.nii.gz", (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    old = os.umask(0o022)
    try:
        rc, _, err = run(capsys, "register", f, m, "--out", tmp_path / "out", *FAST)
    finally:
        os.umask(old)
    assert rc == 0, err
    modes = {n: stat.S_IMODE(os.stat(tmp_path / "out" / n).st_mode) for n in OUTPUTS}
    assert modes == {n: 0o644 for n in OUTPUTS}
