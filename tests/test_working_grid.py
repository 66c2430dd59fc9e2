"""The working grid: the deformable stage no finer than the moving image's voxels where they are 2.5 or more
times the fixed image's (priorreg.working_grid)."""
import numpy as np
from scipy import ndimage

import priorreg
import synthetic as syn
from priorreg import Image
from priorreg.working_grid import MIN_RATIO, working_factors


def test_the_factors_follow_the_moving_voxels_per_axis_from_two_and_a_half_times_the_fixed_ones():
    fix = Image(np.zeros((64, 64, 64)), (1.0, 1.0, 1.0))
    assert working_factors(fix, Image(np.zeros((16, 16, 16)), (4.0, 4.0, 4.0)), 3) == (4, 4, 4)
    assert working_factors(fix, Image(np.zeros((8, 8, 8)), (8.0, 8.0, 8.0)), 3) == (4, 4, 4)  # room for 3 levels
    assert working_factors(fix, Image(np.zeros((8, 8, 8)), (8.0, 8.0, 8.0)), 1) == (8, 8, 8)
    assert working_factors(fix, Image(np.zeros((32, 32, 32)), (2.0, 2.0, 3.0)), 3) == (1, 1, 2)  # 2 x: the fixed grid
    t2w = Image(np.zeros((19, 384, 384)), (3.0, 0.5, 0.5))  # a prostate T2w and its ADC map: in plane only
    assert working_factors(t2w, Image(np.zeros((19, 128, 84)), (3.0, 2.0, 2.0)), 3) == (1, 4, 4)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))  # an oblique moving grid: a voxel's extent along each axis
    turned = Image(np.zeros((16, 16, 16)), (4.0, 4.0, 4.0), direction=np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]))
    assert working_factors(fix, turned, 3) == (4, 4, 4) and MIN_RATIO == 2.5


def test_a_moving_image_of_coarse_voxels_is_registered_on_its_resolution_and_the_field_is_on_the_fixed_grid():
    """A 4 mm moving image onto a 1 mm fixed one: the finest level has the moving image's voxels, the field
    and the warped image are on the fixed grid, the bending weight is the fixed grid's, and the field comes
    closer to the truth than no registration does."""
    shape = (64, 64, 64)
    lab = syn.anatomy(shape, seed=3)
    v = syn.smooth_field(shape, 4.0, sigma=12, seed=4)
    fixed = syn.deform(syn.contrast(lab, syn.T1, seed=5), v)
    moving = ndimage.gaussian_filter(syn.contrast(lab, syn.T2_MONO, seed=6), 1.7)[::4, ::4, ::4]
    r = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), linear="none")
    assert r.field.shape == (3, *shape) and r.warped.shape == shape and r.jacobian.shape == shape
    assert tuple(r.history[-1].shape) == (16, 16, 16) and tuple(r.history[-1].spacing) == (4.0, 4.0, 4.0)
    full = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), linear="none", max_iterations=0)
    assert r.history[-1].regulariser == full.history[-1].regulariser  # the same energy: weights of the fixed grid
    inside = lab > 0
    error = np.sqrt(((r.field - v) ** 2).sum(0))[inside].mean()
    assert error < 0.8 * np.sqrt((v**2).sum(0))[inside].mean()


def test_the_small_field_note_counts_the_voxels_the_field_was_found_on():
    """A 1.5 mm warp is 1.5 voxels of the 1 mm fixed grid but a third of the 4 mm moving image's voxels, the
    scale of the error floor there: the note speaks of the working grid's voxels."""
    shape = (64, 64, 64)
    lab = syn.anatomy(shape, seed=3)
    fixed = syn.deform(syn.contrast(lab, syn.T1, seed=5), syn.smooth_field(shape, 1.5, sigma=12, seed=4))
    moving = ndimage.gaussian_filter(syn.contrast(lab, syn.T2_MONO, seed=6), 1.7)[::4, ::4, ::4]
    r = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), linear="none", warn=False)
    (note,) = [w for w in r.warnings if "the field is small" in w]
    assert "voxel of 4 x 4 x 4 mm" in note


def test_the_field_goes_back_onto_the_fixed_grid_in_slabs_as_in_one_piece(monkeypatch):
    import torch

    from priorreg import pyramid, working_grid

    u = torch.as_tensor(np.random.default_rng(1).normal(size=(3, 5, 6, 4)))
    grid = working_grid.WorkingGrid((19, 24, 16), (4, 4, 4))
    whole = grid.field_back(u)
    inner = pyramid.upsample_field(u, (17, 21, 13), ratio=[4, 4, 4]).numpy()  # fixed voxels up to the last working one
    assert np.abs(whole[:, :17, :21, :13] - inner).max() < 1e-12  # (the padded grid: other rounding)
    monkeypatch.setattr(working_grid, "SLAB_VOXELS", 3 * 24 * 16)  # 3 rows a slab, the last one shorter
    assert np.array_equal(grid.field_back(u), whole)
    # Beyond the last working voxel (f - 1 rows at the far edges) the field is extrapolated, not clamped:
    # an affine field comes back affine everywhere (a user's affine initial_field was 0.27 mm off there).
    idx = np.indices((5, 6, 4), dtype=float)
    affine = torch.as_tensor(np.stack([0.3 * idx[0] - 0.2 * idx[2] + 1, 0.1 * idx[1], 0.5 * idx[2] - 0.4 * idx[0]]))
    fine = np.indices(grid.shape, dtype=float) / 4
    truth = np.stack([0.3 * fine[0] - 0.2 * fine[2] + 1, 0.1 * fine[1], 0.5 * fine[2] - 0.4 * fine[0]])
    assert np.abs(grid.field_back(affine) - truth).max() < 1e-12


def test_a_registration_with_a_prior_keeps_the_fixed_grid():
    """A prior's tables were learned level by level on its training pairs' fixed grids: its level 0 is the
    fixed grid's resolution, so the levels stay there."""
    shape = (32, 32, 32)
    lab = syn.anatomy(shape, seed=3)
    fixed, moving = syn.contrast(lab, syn.T1, seed=5), syn.contrast(lab, syn.T2_MONO, seed=6)[::4, ::4, ::4]
    prior = priorreg.fit_prior([fixed], [syn.contrast(lab, syn.T2_MONO, seed=7)], levels=2)
    r = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), prior=prior, levels=2,
                          max_iterations=2, linear="none", warn=False)
    assert tuple(r.history[-1].shape) == shape


def test_a_small_mask_or_many_regional_blocks_keep_what_the_fixed_grid_allowed():
    """A 10-voxel mask on a 1 mm grid (with a 4 mm moving image) was cut to every 4th voxel and then emptied by
    the pyramid ("use fewer levels or a larger mask"), and blocks asked for on the fixed grid went below a
    voxel on the working one: the working grid keeps a mask's region (a block is in it where any voxel is),
    and where a mask or the blocks still do not fit, the fixed grid is kept."""
    shape = (64, 64, 64)
    lab = syn.anatomy(shape, seed=3)
    fixed, moving = syn.contrast(lab, syn.T1, seed=5), syn.contrast(lab, syn.T2_MONO, seed=6)[::4, ::4, ::4]
    kw = dict(linear="none", max_iterations=2, warn=False)
    mask = np.zeros(shape, bool)
    mask[35:45, 35:45, 35:45] = True
    r = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), mask=mask, **kw)
    assert r.field.shape == (3, *shape)
    tiny = np.zeros(shape, bool)
    tiny[34:38, 34:38, 34:38] = True
    r = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), mask=tiny, levels=1, **kw)
    assert tuple(r.history[-1].shape) == (16, 16, 16)  # a 4-voxel mask: one working voxel or two, kept
    r = priorreg.register(Image(fixed, (1.0,) * 3), Image(moving, (4.0,) * 3), local_regions=(6, 6, 6), **kw)
    assert tuple(r.history[-1].shape) == shape  # 6 blocks of 16 / 4 voxels at the coarsest: the fixed grid


def test_the_command_line_says_when_the_field_was_found_on_coarser_voxels(tmp_path, capsys):
    from priorreg import cli

    shape = (64, 64, 64)
    lab = syn.anatomy(shape, seed=3)
    priorreg.write_image(Image(syn.contrast(lab, syn.T1, seed=5).astype(np.float32), (1.0,) * 3), tmp_path / "f.nii.gz")
    moving = syn.contrast(lab, syn.T2_MONO, seed=6)[::4, ::4, ::4].astype(np.float32)
    priorreg.write_image(Image(moving, (4.0,) * 3), tmp_path / "m.nii.gz")
    args = ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--max-iterations", "2", "--linear", "none"]
    assert cli.main([*args, "--out", str(tmp_path / "o")]) == 0
    assert ("the deformable stage worked on 4 x 4 x 4 mm voxels, no finer than the moving image's; the field is "
            "interpolated onto the fixed image's 1 x 1 x 1 mm grid") in capsys.readouterr().err
    assert cli.main([*args[:2], args[1], *args[3:], "--out", str(tmp_path / "same")]) == 0  # one grid: nothing to say
    assert "worked on" not in capsys.readouterr().err
