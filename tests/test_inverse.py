"""The inverse of a field (priorreg.inverse): exact on affine maps, round trips with a warp on top, on other grids
and directions, in 2D and 3D; RegistrationResult.apply_inverse and `priorreg apply --inverse`."""
import dataclasses

import numpy as np
import pytest
import torch

import priorreg
import synthetic
from priorreg import cli, spatial
from priorreg import io as pio
from priorreg.errors import PriorRegError
from priorreg.image import Image
from priorreg.inverse import invert_field
from priorreg.transform import LinearResult, linear_to_field


def _rotation(d, degrees, axis=(0, 1)):
    R, (i, j), a = np.eye(d), axis, np.deg2rad(degrees)
    R[i, i], R[i, j], R[j, i], R[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return R


def _grids(d):
    """A fixed grid and a moving grid of another size, spacing, origin and direction."""
    shape = (36, 44) if d == 2 else (22, 26, 24)
    fixed = Image(np.zeros(shape), (1.5, 1.2, 1.0)[:d], origin=(4.0, -7.0, 3.0)[:d], direction=_rotation(d, 12))
    moving = Image(np.zeros(tuple(n + 6 for n in shape)), (1.1, 1.3, 0.9)[:d], origin=(-6.0, -3.0, 2.0)[:d],
                   direction=_rotation(d, -20, (d - 2, d - 1)))
    return fixed, moving


def _affine(d):
    A = 1.08 * _rotation(d, 25) + 0.04 * np.eye(d)[::-1]  # rotation, scale and a shear
    return LinearResult(matrix=A, translation=np.array([3.0, -2.5, 1.5][:d]))


def _phi(field, fixed, points):
    """The field's map at world points (d, n): X + D u(X), u read by linear interpolation."""
    M, b = fixed.index_to_world()
    idx = np.linalg.inv(M) @ (points - b[:, None])
    u = spatial.sample(torch.as_tensor(field), torch.as_tensor(idx.reshape(fixed.ndim, -1, *[1] * (fixed.ndim - 1))))
    return points + fixed.direction @ u.numpy().reshape(fixed.ndim, -1), idx


def _round_trip(field, fixed, moving, inv):
    """|phi(Y + D_m v(Y)) - Y| (mm) at the moving voxels whose inverse lies inside the fixed grid."""
    M, b = moving.index_to_world()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in moving.shape], indexing="ij")).reshape(moving.ndim, -1)
    Y = M @ idx + b[:, None]
    X = Y + moving.direction @ inv.field.reshape(moving.ndim, -1)
    P, fidx = _phi(field, fixed, X)
    inner = np.all([(fidx[k] >= 0) & (fidx[k] <= n - 1) for k, n in enumerate(fixed.shape)], axis=0)
    return np.linalg.norm(P - Y, axis=0)[inner], inner


@pytest.mark.parametrize("d", [2, 3])
def test_an_affine_field_is_inverted_exactly_on_another_grid(d):
    fixed, moving = _grids(d)
    lin = _affine(d)
    inv = invert_field(linear_to_field(lin, fixed), fixed, moving)
    M, b = moving.index_to_world()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in moving.shape], indexing="ij")).reshape(d, -1)
    Y = M @ idx + b[:, None]
    want = np.linalg.solve(moving.direction, np.linalg.solve(lin.matrix, Y - lin.translation[:, None]) - Y)
    np.testing.assert_allclose(inv.field.reshape(d, -1), want, atol=1e-8)
    assert inv.iterations <= 2 and 0.0 < inv.outside < 1.0


@pytest.mark.parametrize("d", [2, 3])
def test_an_affine_map_with_a_warp_on_top_round_trips(d):
    fixed, moving = _grids(d)
    warp = synthetic.smooth_field(fixed.shape, 2.5, seed=d) * np.reshape(fixed.spacing, (-1,) + (1,) * d)
    field = linear_to_field(_affine(d), fixed) + warp
    inv = invert_field(field, fixed, moving)
    err, inner = _round_trip(field, fixed, moving, inv)
    assert inner.mean() > 0.3 and err.max() < 0.01, (inner.mean(), err.max())
    assert inv.residual_mm < 0.01 * min(fixed.spacing) and inv.iterations < 20


@pytest.mark.parametrize("stretch", [3.0, 5.0])
def test_a_field_that_stretches_a_region_several_fold_is_inverted(stretch):
    """A field that does not fold but stretches a band by 3-5 x: the plain fixed-point iteration (X = A^-1 (Y - t -
    w(X))) diverged there (9.6 and 36 mm off); Newton's steps reach it (SimpleITK's InvertDisplacementField agrees)."""
    from scipy.special import erf

    n = 100
    x = np.arange(n, dtype=float)
    field = np.zeros((2, n, n))
    field[0] = ((stretch - 1) * 6 * np.sqrt(np.pi / 2) * erf((x - 50) / (6 * np.sqrt(2))))[:, None]  # d phi/dx: 1..stretch
    grid = Image(np.zeros((n, n)), (1.0, 1.0))
    inv = invert_field(field, grid, grid)
    err, inner = _round_trip(field, grid, grid, inv)
    assert inner.mean() > 0.5 and err.max() < 0.005 and inv.residual_mm < 0.005, (err.max(), inv)


def test_a_flat_3d_grid_keeps_the_affine_part_in_its_plane():
    """A single-slice 3D grid at z = 0 turned 90 degrees in plane: the affine fit cannot see the normal direction,
    and discarding the whole affine part (its determinant was 0) left the points 55 mm off."""
    fixed = Image(np.zeros((1, 64, 64)), (1.0, 1.0, 1.0))
    lin = LinearResult(matrix=_rotation(3, 90, (0, 1)), translation=np.array([63.0, 0.0, 0.0]))  # world x, y: the plane
    inv = invert_field(linear_to_field(lin, fixed), fixed, fixed)
    err, inner = _round_trip(linear_to_field(lin, fixed), fixed, fixed, inv)
    assert inner.mean() > 0.5 and err.max() < 1e-6, (err.max(), inner.mean())


def test_a_folding_field_says_its_inverse_is_approximate():
    fixed = Image(np.zeros((40, 40)), (1.0, 1.0))
    y = np.arange(40.0)
    fold = np.zeros((2, 40, 40))
    fold[0] = (6.0 * np.sin(y / 2.0))[:, None]  # d u / d y up to 3: the map folds back on itself
    with pytest.warns(priorreg.PriorRegWarning, match="the inverse is approximate.*the field folds where"):
        inv = invert_field(fold, fixed, fixed)
    assert inv.folded > 0.05, inv  # said from the Jacobian, not only from points that did not settle
    assert invert_field(np.zeros_like(fold), fixed, fixed).folded == 0.0


def test_bad_arguments_are_one_error():
    fixed, moving = _grids(2)
    with pytest.raises(PriorRegError, match="field must have shape"):
        invert_field(np.zeros((3, *fixed.shape)), fixed, moving)
    with pytest.raises(PriorRegError, match="priorreg.Image"):
        invert_field(np.zeros((2, *fixed.shape)), np.zeros(fixed.shape), moving)
    bad = np.zeros((2, *fixed.shape))
    bad[0, 3, 3] = np.nan
    with pytest.raises(PriorRegError, match="finite"):
        invert_field(bad, fixed, moving)


def test_result_apply_inverse_brings_the_warped_image_back_onto_the_moving_grid():
    f = Image(synthetic.contrast(synthetic.anatomy((64, 72), seed=3), [0.0, 0.3, 0.6, 1.0, 0.8]), (1.0, 1.2))
    m = Image(np.roll(synthetic.contrast(synthetic.anatomy((64, 72), seed=3), [1.0, 0.7, 0.2, 0.5, 0.1], seed=4),
                      3, axis=1), (1.0, 1.2), origin=(2.0, -1.0))
    res = priorreg.register(f, m, preset="default", levels=2, max_iterations=30, warn=False)
    back = res.apply_inverse(res.warped)
    assert back.shape == m.shape and back.same_grid(m)
    inner = (slice(8, -8), slice(10, -10))
    err = np.abs(back.array - m.array)[inner].mean()
    assert err < 0.1 * np.abs(m.array[inner] - m.array[inner].mean()).mean(), err
    labels = res.apply_inverse(f.with_array((f.array > 0.5).astype(np.uint8)), interpolation="nearest")
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) == {0, 1}
    fold = np.zeros_like(res.field)
    fold[0] = (6.0 * np.sin(np.arange(f.shape[0]) / 2.0))[:, None]
    with pytest.warns(priorreg.PriorRegWarning, match="inverse is approximate"):  # it said nothing
        dataclasses.replace(res, field=fold).apply_inverse(res.warped)


def test_cli_apply_inverse_round_trips_a_known_field_and_checks_its_reference(capsys, tmp_path):
    fixed, moving = _grids(3)
    warp = synthetic.smooth_field(fixed.shape, 2.0, seed=1) * np.reshape(fixed.spacing, (3, 1, 1, 1))
    field = linear_to_field(_affine(3), fixed) + warp
    pio.write_field(np.einsum("ij,j...->...i", fixed.direction, field), fixed, tmp_path / "field.nii.gz")
    grid = np.meshgrid(*[np.linspace(0, 3, n) for n in moving.shape], indexing="ij")
    pio.write_image(moving.with_array(np.sin(grid[0]) + np.cos(grid[1]) * grid[2]), tmp_path / "moving.nii.gz")
    pio.write_image(fixed.with_array(np.ones(fixed.shape)), tmp_path / "fixed.nii.gz")
    assert cli.main(["apply", str(tmp_path / "moving.nii.gz"), "--field", str(tmp_path / "field.nii.gz"), "--reference",
                     str(tmp_path / "fixed.nii.gz"), "--out", str(tmp_path / "on_fixed.nii.gz"), "--quiet"]) == 0
    assert cli.main(["apply", str(tmp_path / "on_fixed.nii.gz"), "--field", str(tmp_path / "field.nii.gz"),
                     "--reference", str(tmp_path / "moving.nii.gz"), "--inverse", "--out", str(tmp_path / "back.nii.gz"),
                     "--quiet"]) == 0
    back, want = pio.read_image(tmp_path / "back.nii.gz"), pio.read_image(tmp_path / "moving.nii.gz")
    assert back.same_grid(want)
    inv = invert_field(field, fixed, moving)
    _, inner = _round_trip(field, fixed, moving, inv)
    inner = inner.reshape(moving.shape) & (back.array != 0)
    shrunk = np.zeros_like(inner)
    shrunk[2:-2, 2:-2, 2:-2] = inner[2:-2, 2:-2, 2:-2]  # two interpolations: the edge voxels blend with the fill
    assert shrunk.mean() > 0.2 and np.abs(back.array - want.array)[shrunk].max() < 0.05
    capsys.readouterr()
    fold = np.zeros((3, *fixed.shape))
    fold[0] = (6.0 * np.sin(np.arange(fixed.shape[0]) / 2.0))[:, None, None]
    pio.write_field(np.einsum("ij,j...->...i", fixed.direction, fold), fixed, tmp_path / "fold.nii.gz")
    assert cli.main(["apply", str(tmp_path / "on_fixed.nii.gz"), "--field", str(tmp_path / "fold.nii.gz"),
                     "--reference", str(tmp_path / "moving.nii.gz"), "--inverse", "--out", str(tmp_path / "f.nii.gz"),
                     "--quiet"]) == 0
    assert "inverse is approximate" in capsys.readouterr().err


def test_cli_apply_inverse_refuses_the_wrong_slice_in_one_line(capsys, tmp_path):
    """Single slices of a volume 2 mm apart: --inverse needs the registration's moving slice as --reference and an
    image of the fixed slice's plane."""
    import SimpleITK as sitk

    for name, z in (("fixed", 0.0), ("moving", 2.0)):
        img = sitk.GetImageFromArray(np.random.default_rng(0).random((1, 20, 24)))
        img.SetOrigin((0.0, 0.0, z))
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
    grid = pio.read_image(tmp_path / "fixed.nii.gz")
    pio.write_field(np.zeros((*grid.shape, 2)), grid, tmp_path / "field.nii.gz", through_plane=2.0)
    args = ["apply", "--field", str(tmp_path / "field.nii.gz"), "--inverse", "--quiet"]
    assert cli.main([*args, str(tmp_path / "fixed.nii.gz"), "--reference", str(tmp_path / "moving.nii.gz"),
                     "--out", str(tmp_path / "ok.nii.gz")]) == 0
    capsys.readouterr()
    for image, ref, said in (("fixed", "fixed", "give the moving image of the registration as --reference"),
                             ("moving", "moving", "must be an image of the fixed space")):
        assert cli.main([*args, str(tmp_path / f"{image}.nii.gz"), "--reference", str(tmp_path / f"{ref}.nii.gz"),
                         "--out", str(tmp_path / f"{image}-{ref}.nii.gz")]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
