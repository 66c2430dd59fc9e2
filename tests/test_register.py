import functools
import json
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

import priorreg
import synthetic as syn
from conftest import assert_same_solution, cuda
from priorreg import Image, PriorRegError, PriorRegWarning, RegistrationOptions, fit_prior, register as register_with_presets, warp
from priorreg.resample import field_of_view, warp_with_fov

# These tests check the engine's mechanics on its field defaults (RegistrationOptions()); what
# a user gets with no flags (the "default" preset) is tested in test_presets.py.
register = functools.partial(register_with_presets, options=RegistrationOptions())

# The phantom is piecewise constant: inside a tissue class the warp is not observable
# and only the regulariser decides it. Its true fields are very smooth (sigma ~ 1/6 of
# the image), so these tests add a strong membrane weight to the default bending term.
SMOOTH = dict(bins=32, parzen_sigma=1.0, regularization=20.0)


def _epe(field, v, mask):
    return float(np.sqrt(((field - v) ** 2).sum(0))[mask].mean())


def _body(lab, v):
    return syn.deform((lab > 0).astype(float), v) > 0.5


def test_no_motion_gives_a_near_zero_field():
    # Aligned images related by an exact intensity map: the joint histogram is a thin
    # curve that any warp spreads. The Parzen-smoothed MI of a noisy image still
    # peaks a little off identity (measured: mean 0.015, max 0.2 voxel), so "zero"
    # here means well below a tenth of a voxel on average.
    lab = syn.anatomy((64, 72))
    f = syn.contrast(lab, syn.T1, noise=0.01)
    r = register(f, 2.0 - 3.0 * f, levels=2)
    norm = np.sqrt((r.field**2).sum(0))
    assert norm.mean() < 0.05 and norm.max() < 0.3, (norm.mean(), norm.max())
    assert r.jacobian_stats["percent_nonpositive"] == 0
    # Identical images with a single level and no iterations give exactly zero.
    r0 = register(f, f, levels=1, max_iterations=0)
    assert np.all(r0.field == 0) and np.allclose(r0.warped.array, f)


@pytest.mark.parametrize("contrast", [syn.T2_MONO, syn.PD_NONMONO], ids=["monotone", "non-monotone"])
def test_recovers_a_known_smooth_warp_in_2d(contrast):
    f, m, v, lab = syn.case((96, 112), contrast, max_disp=4.0)
    mask = _body(lab, v)
    r = register(f, m, levels=3, **SMOOTH)
    before, after = _epe(0 * v, v, mask), _epe(r.field, v, mask)
    assert before > 1.2
    assert after < 0.5, (before, after)
    assert r.jacobian_stats["percent_nonpositive"] == 0
    # The energy went down at every level and is reported per term.
    for h in r.history:
        assert h.energy[-1] <= h.energy[0]
        assert set(h.terms[-1]) == {"-MI", "R", "B"}


def test_regional_mi_survives_a_bias_field_that_global_mi_does_not():
    # A smooth multiplicative bias of e^(+-1.6) across the moving image makes the tissue
    # classes' intensities cross over the field of view: one global joint histogram gets
    # blurred, the per-block histograms of regional MI (4 x 4 blocks) stay sharp.
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=4.0, seed=0)
    mask = _body(lab, v)
    X, Y = np.meshgrid(np.linspace(-1, 1, m.shape[0]), np.linspace(-1, 1, m.shape[1]), indexing="ij")
    m = m * np.exp(0.8 * (X + Y))
    glob = register(f, m, levels=3, **SMOOTH)
    local = register(f, m, levels=3, local_weight=1.0, local_regions=4, **SMOOTH)
    e_glob, e_local = _epe(glob.field, v, mask), _epe(local.field, v, mask)  # measured 1.10 and 0.52
    assert e_local < 0.65 and e_glob > e_local + 0.3, (e_glob, e_local)
    assert local.jacobian_stats["percent_nonpositive"] == 0
    assert {"-MI", "-rMI"} <= set(local.history[-1].terms[-1])
    assert local.options.local_weight == 1.0


def test_a_random_subset_of_samples_still_recovers_the_warp():
    # max_samples=2000 of 10752 voxels at the finest level (all 2688 at the next one would
    # be subsampled too, 2000 of them): the field stays dense and smooth. Measured EPE 0.28
    # with every voxel, 0.36 with the subset.
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=4.0)
    mask = _body(lab, v)
    r = register(f, m, levels=3, max_samples=2000, **SMOOTH)
    assert _epe(r.field, v, mask) < 0.45 and _epe(0 * v, v, mask) > 1.2
    assert r.jacobian_stats["percent_nonpositive"] == 0
    assert r.options.max_samples == 2000


def test_regional_mi_beside_a_regional_prior_on_another_block_layout():
    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=3.0, seed=3)
    # The prior (2 x 2 blocks) from the aligned pair; regional MI on 4 x 3 blocks: two joint histograms.
    prior = fit_prior(syn.contrast(lab, syn.T1), m, regions=2, bins=32, parzen_sigma=1.0, levels=2)
    r = register(f, m, prior=prior, alpha=0.5, levels=2, local_weight=0.5, local_regions=(4, 3), **SMOOTH)
    assert {"-MI", "-rMI", "KL"} <= set(r.history[-1].terms[-1])
    for h in r.history:
        assert h.energy[-1] < h.energy[0]


@pytest.mark.parametrize("contrast", [syn.T2_MONO, syn.PD_NONMONO], ids=["monotone", "non-monotone"])
def test_recovers_a_known_smooth_warp_in_3d_with_anisotropic_spacing(contrast):
    shape, spacing = (48, 52, 44), (1.0, 1.0, 1.5)
    f, m, v, lab = syn.case(shape, contrast, max_disp=3.0)
    mask = _body(lab, v)
    r = register(Image(f, spacing), Image(m, spacing), levels=2, **SMOOTH)
    v_mm = v * np.asarray(spacing).reshape(3, 1, 1, 1)
    # EPE in voxels: the field is in mm.
    err_vox = np.sqrt((((r.field - v_mm) / np.asarray(spacing).reshape(3, 1, 1, 1)) ** 2).sum(0))[mask].mean()
    assert _epe(0 * v, v, mask) > 0.6
    assert err_vox < 0.5, err_vox
    assert r.jacobian_stats["percent_nonpositive"] == 0


def test_prior_registration_alpha_zero_and_blend():
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=4.0)
    # Training pair: another subject's anatomy, aligned, with a different gain and offset
    # on the moving modality (normalisation must absorb it).
    lab_t = syn.anatomy((96, 112), seed=5)
    g1 = syn.contrast(lab_t, syn.T1, seed=40)
    g2 = 3.0 * syn.contrast(lab_t, syn.PD_NONMONO, seed=41) + 10.0
    prior = fit_prior([g1], [g2], bins=32, parzen_sigma=1.0, levels=3)
    mask = _body(lab, v)
    for alpha, term, name in ((0.0, "kl", "KL"), (0.4, "kl", "KL"), (0.0, "ckl", "cKL"), (0.4, "ckl", "cKL")):
        r = register(f, m, prior=prior, alpha=alpha, levels=3, prior_term=term, **SMOOTH)
        assert _epe(r.field, v, mask) < 0.6, (alpha, term, _epe(r.field, v, mask))
        assert set(r.history[-1].terms[-1]) == {"-MI", name, "R", "B"}
        assert r.jacobian_stats["percent_nonpositive"] == 0


def test_alpha_schedule_mi_finest_uses_the_prior_on_coarse_levels_only():
    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=3.0)
    lab_t = syn.anatomy((64, 72), seed=5)
    prior = fit_prior([syn.contrast(lab_t, syn.T1, seed=40)], [syn.contrast(lab_t, syn.T2_MONO, seed=41)], levels=2)
    r = register(f, m, prior=prior, alpha=0.0, alpha_schedule="mi-finest", levels=2)
    o = r.options
    for h, w_mi in ((r.history[0], 0.0), (r.history[-1], 1.0)):  # coarsest first: prior only, then MI only
        t = h.terms[-1]
        assert ("KL" in t) == (w_mi < 1)  # at alpha = 1 the level runs as without the prior
        expect = w_mi * t["-MI"] + (1 - w_mi) * t.get("KL", 0.0) + o.regularization * t["R"] + o.bending * t["B"]
        assert abs(h.energy[-1] - expect) < 1e-9 * max(1.0, abs(expect)), (h.level, h.energy[-1], expect)
    constant = register(f, m, prior=prior, alpha=0.0, levels=2)
    assert np.allclose(constant.history[0].energy, r.history[0].energy)  # same coarse level
    assert not np.allclose(constant.field, r.field)


def test_a_prior_whose_coarse_levels_the_finest_level_started_over_from_is_reported():
    """mi-finest on a nearly aligned pair: the finest level (MI alone) restarts from the start field, so what the
    prior's coarse levels did is dropped; a user had read no word of it. With the constant schedule the prior acts
    at the finest level too, and nothing is said."""
    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=0.6)
    pairs = [(syn.anatomy((64, 72), seed=s), 40 + 2 * s) for s in (5, 6)]
    prior = fit_prior([syn.contrast(a, syn.T1, seed=k) for a, k in pairs],
                      [syn.contrast(a, syn.T2_MONO, seed=k + 1) for a, k in pairs], levels=2)
    for alpha in (0.4, "auto"):
        r = register_with_presets(f, m, prior=prior, alpha=alpha, alpha_schedule="mi-finest", levels=2, warn=False)
        assert r.history[-1].coarse_displacement["bending_factor"] > 1  # the restart (the default preset's)
        assert sum("did not shape the result" in w for w in r.warnings) == 1, (alpha, r.warnings)
    auto_mi = register_with_presets(f, m, prior=prior, alpha="auto", alpha_schedule="mi-finest", levels=2, warn=False)
    assert np.array_equal(auto_mi.field, register_with_presets(f, m, prior=prior, alpha=1.0, levels=2, warn=False).field)
    constant = register_with_presets(f, m, prior=prior, alpha=0.4, levels=2, warn=False)
    assert not any("did not shape" in w for w in constant.warnings)


def test_regularization_scaling_alpha_weighs_the_regulariser_by_each_levels_alpha():
    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=3.0)
    lab_t = syn.anatomy((64, 72), seed=5)
    prior = fit_prior([syn.contrast(lab_t, syn.T1, seed=40)], [syn.contrast(lab_t, syn.T2_MONO, seed=41)], levels=2)
    # (alpha, schedule) -> the alpha of (coarse, finest) level; "mi-finest" ends at alpha = 1
    # (unscaled), alpha = 0 is prior only (nothing to balance: unscaled).
    for alpha, schedule, level_alphas in ((0.4, "constant", (0.4, 0.4)), (0.4, "mi-finest", (0.4, 1.0)), (0.0, "constant", (0.0, 0.0))):
        r = register(f, m, prior=prior, alpha=alpha, alpha_schedule=schedule, regularization_scaling="alpha", levels=2)
        o = r.options
        for h, a in zip(r.history, level_alphas):
            t = h.terms[-1]
            k = a if 0 < a < 1 else 1.0
            expect = a * t["-MI"] + (1 - a) * t.get("KL", 0.0) + k * (o.regularization * t["R"] + o.bending * t["B"])
            assert abs(h.energy[-1] - expect) < 1e-9 * max(1.0, abs(expect)), (alpha, schedule, h.level)
    plain = register(f, m, prior=prior, alpha=0.4, levels=2)
    scaled = register(f, m, prior=prior, alpha=0.4, regularization_scaling="alpha", levels=2)
    assert not np.allclose(plain.field, scaled.field)


def test_a_prior_trained_with_the_modalities_swapped_is_reported():
    f, m, v, lab = syn.case((96, 112), syn.T2_MONO, max_disp=3.0)
    lab_t = syn.anatomy((96, 112), seed=5)
    t1, t2 = syn.contrast(lab_t, syn.T1, seed=40), syn.contrast(lab_t, syn.T2_MONO, seed=41)
    kw = dict(alpha=0.4, levels=2, bins=32, parzen_sigma=1.0)
    assert register(f, m, prior=fit_prior([t1], [t2], bins=32, parzen_sigma=1.0, levels=2), **kw).warnings == []
    swapped = fit_prior([t2], [t1], bins=32, parzen_sigma=1.0, levels=2)  # moving modality first: a user's slip
    with pytest.warns(PriorRegWarning, match="far better with fixed and moving swapped"):
        r = register(f, m, prior=swapped, **kw)
    assert len(r.warnings) == 1 and r.as_dict()["warnings"] == r.warnings
    assert register(f, m, prior=swapped, alpha=1.0, levels=2, bins=32, parzen_sigma=1.0).warnings == []  # prior unused
    one_level_mi = register(f, m, prior=swapped, alpha_schedule="mi-finest", **dict(kw, levels=1))  # unused too
    assert one_level_mi.warnings == []
    quiet = register(f, m, prior=swapped, warn=False, **kw)  # no Python warning (filterwarnings=error would raise)
    assert quiet.warnings == r.warnings


def test_warp_nearest_keeps_labels_and_linear_matches_result():
    f, m, v, lab = syn.case((48, 40), syn.T2_MONO, max_disp=2.0)
    r = register(f, m, levels=2, **SMOOTH)
    assert np.allclose(warp(m, r.field).array, r.warped.array)
    wl = r.apply(lab.astype(np.uint8), interpolation="nearest").array
    assert wl.dtype == np.uint8 and set(np.unique(wl)) <= set(np.unique(lab))


def test_warp_of_a_known_translation_on_an_anisotropic_grid():
    i, j = np.meshgrid(np.arange(30), np.arange(17), indexing="ij")
    img = Image((10.0 * i + j), spacing=(0.5, 2.0))
    field = np.zeros((2, 30, 17))
    field[0], field[1] = 1.0, 4.0  # = 2 and 2 voxels
    out = warp(img, field).array
    assert np.allclose(out[:28, :15], (10.0 * (i + 2) + (j + 2))[:28, :15])
    same, fov = warp_with_fov(img, field)  # apply's coverage check reads this map instead of recomputing it
    assert np.array_equal(same.array, out) and fov.shape == img.shape
    assert fov[:28, :15].all() and not fov[28:].any() and not fov[:, 15:].any()
    assert np.array_equal(fov, field_of_view(img, img, field))


def test_different_grids_start_from_world_alignment():
    # The moving image covers the same world box on a grid with another spacing and origin.
    f, m, v, lab = syn.case((64, 64), syn.T2_MONO, max_disp=0.0)
    fixed = Image(f, spacing=(1.0, 1.0))
    coarse = m[::2, ::2]
    moving = Image(coarse, spacing=(2.0, 2.0))
    r = register(fixed, moving, levels=1, max_iterations=0)
    assert np.abs(r.warped.array[:62, :62] - m[:62, :62]).mean() < 0.05


def test_result_carries_options_and_history():
    f, m, v, lab = syn.case((48, 40), syn.T2_MONO, max_disp=2.0)
    r = register(f, m, levels=2, max_iterations=5)
    assert isinstance(r.options, RegistrationOptions) and r.options.max_iterations == 5
    assert [h.level for h in r.history] == [1, 0]
    assert all(h.iterations <= 5 for h in r.history)
    d = r.as_dict()
    assert d["options"]["levels"] == 2 and "percent_nonpositive" in d["jacobian"]


def test_signature_defaults_come_from_the_options_object():
    import inspect

    sig = inspect.signature(register)
    assert "alpha" not in sig.parameters  # only options given explicitly override the preset / options=
    fsig = inspect.signature(fit_prior)  # not given: the default preset's for the images' dimension
    assert all(fsig.parameters[name].default is None for name in ("bins", "parzen_sigma", "levels", "normalization"))
    p2 = fit_prior(np.random.default_rng(0).random((32, 36)), np.random.default_rng(1).random((32, 36)))
    two = priorreg.options.preset_options("default", 2)
    assert (p2.bins, p2.parzen_sigma, p2.levels, p2.normalization) == (two.bins, two.parzen_sigma, two.levels,
                                                                       two.normalization)


# ---------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def pair():
    f, m, v, lab = syn.case((32, 36), syn.T2_MONO, max_disp=1.0)
    return f, m


def _raises(match, fn, *a, **k):
    with pytest.raises(PriorRegError, match=match):
        fn(*a, **k)


def test_refuses_alpha_below_one_without_prior(pair):
    _raises(r"alpha=0\.4 < 1 needs a learned prior", register, *pair, alpha=0.4)


def test_refuses_nan_and_inf(pair):
    f, m = pair
    bad = f.copy()
    bad[3, 4] = np.nan
    _raises(r"fixed contains 1 NaN/Inf voxel", register, bad, m)
    bad[3, 4] = np.inf
    _raises(r"moving contains 1 NaN/Inf voxel", register, f, bad)


def test_refuses_constant_images(pair):
    _raises(r"moving is constant", register, pair[0], np.full_like(pair[1], 7.0))


def test_refuses_empty_mask(pair):
    _raises(r"mask is empty", register, *pair, mask=np.zeros_like(pair[0]))
    _raises(r"mask has shape \(3, 3\)", register, *pair, mask=np.ones((3, 3)))
    f, m = (priorreg.Image(a, (1.5, 1.0), (40.0, -20.0)) for a in pair)
    ones = np.ones_like(pair[0])  # a mask Image elsewhere was taken voxel for voxel, as if on the fixed grid
    _raises(r"mask lies on another grid than the fixed image \(origin", register, f, m, mask=priorreg.Image(ones, (1.5, 1.0)))
    assert register(f, m, mask=priorreg.Image(ones, (1.5, 1.0), (40.0, -20.0)), levels=1, max_iterations=2, warn=False)


def test_refuses_mismatched_dimensions(pair):
    _raises(r"fixed is 2D but moving is 3D", register, pair[0], np.random.default_rng(0).random((8, 8, 8)))
    _raises(r"fixed has shape \(32, 36\) but moving has \(30, 36\)", register, pair[0], pair[1][:30])
    _raises(r"must be a 2D or 3D image", register, np.arange(10.0), np.arange(10.0))


def test_refuses_bad_options(pair):
    _raises(r"alpha must be a number in \[0, 1\]", register, *pair, alpha=1.5)
    _raises(r"unknown option\(s\) \['binz'\]", register, *pair, binz=3)
    _raises(r"levels=5 shrinks .* at level 1/5; use levels <= 4", register, *pair, levels=5)  # counted coarse first, as progress is
    _raises(r"device must be 'cpu' or 'cuda'", register, *pair, device="tpu")
    _raises(r"bending must be a number >= 0", register, *pair, bending=-1.0)
    _raises(r"prior_term must be 'kl', 'ce' or 'ckl'", register, *pair, prior_term="js")
    _raises(r"alpha_schedule must be 'constant' or 'mi-finest'", register, *pair, alpha_schedule="linear")
    _raises(r"regularization_scaling must be 'none' or 'alpha'", register, *pair, regularization_scaling="lambda")
    _raises(r"max_samples must be 0 \(every voxel\) or at least 1000", register, *pair, max_samples=-5)
    _raises(r"max_samples must be 0 \(every voxel\) or at least 1000", register, *pair, max_samples=10)
    _raises(r"min_sample_fraction must be in \[0, 1\]", register, *pair, min_sample_fraction=1.5)
    _raises(r"local_weight must be in \[0, 1\]", register, *pair, local_weight=2.0)
    _raises(r"local_regions must be .auto., an integer >= 1", register, *pair, local_regions=0)
    _raises(r"local_regions=\[9, 9\] is too fine", register, *pair, local_weight=0.5, local_regions=9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_refuses_cuda_without_gpu(pair):
    _raises(r"no CUDA device is available", register, *pair, device="cuda")


def test_refuses_a_prior_that_does_not_fit(pair, tmp_path):
    f, m = pair
    prior = fit_prior([f], [m], bins=16, parzen_sigma=1.0, levels=2)
    _raises(r"prior was learned with bins=16 but registration asks bins=64", register, f, m, prior=prior, alpha=0.0, parzen_sigma=1.0, levels=2)
    _raises(r"parzen_sigma=1\.0 but registration asks parzen_sigma=2\.0", register, f, m, prior=prior, alpha=0.0, bins=16, levels=2)
    vol = np.random.default_rng(0).random((8, 8, 8))
    _raises(r"learned on 2D images but the images are 3D", register, vol, vol + 1, prior=prior, alpha=0.0, bins=16, parzen_sigma=1.0, levels=2)
    _raises(r"prior must be a priorreg.Prior", register, f, m, prior="p.npz", alpha=0.0)


def test_a_prior_of_fewer_levels_leaves_the_coarser_levels_without_it(pair):
    """A prior learned with 2 levels (e.g. on a 10-slice slab) made a 3-level run use 2 levels, although alpha
    auto gave it no weight: on a 3D spinal cord pair 1.18 mm against 0.79 mm without the prior. Now the run
    keeps its levels and the coarser ones run without the prior; with no weight at all it runs as without it."""
    from priorreg.options import preset_options

    f, m = pair
    run = functools.partial(register_with_presets, f, m, max_iterations=5, warn=False)
    prior = fit_prior([f, np.flip(f, 1)], [m, np.flip(m, 1)], levels=2)
    res = run(prior=prior, levels=3)
    assert res.options.levels == 3 and [w["level"] for w in res.prior_weights] == [2, 1, 0]
    assert res.prior_weights[0]["alpha"] == 1.0 and "tables for 2 level(s)" in res.prior_weights[0]["reason"]
    fixed = run(prior=prior, alpha=0.5, levels=3)
    assert fixed.options.levels == 3 and any("the coarsest of the 3 levels runs without it" in w for w in fixed.warnings)
    opts = preset_options("default", 2)
    one = fit_prior([f], [m], levels=2, bins=opts.bins, parzen_sigma=opts.parzen_sigma)  # one pair: alpha auto gives it no weight
    unused, default = run(prior=one), run()
    assert [w["alpha"] for w in unused.prior_weights] == [1.0] * opts.levels
    assert unused.options.levels == default.options.levels == 3 and np.array_equal(unused.field, default.field)


def test_prior_save_load_round_trip_and_refusals(pair, tmp_path):
    f, m = pair
    prior = fit_prior([f, f[::-1]], [m, m[::-1]], bins=16, parzen_sigma=1.0, levels=2)
    assert prior.tables.shape == (2, 1, 16, 16) and prior.n_pairs == 2 and prior.regions == (1, 1)
    assert np.allclose(prior.tables.sum((2, 3)), 1.0)
    path = tmp_path / "prior.npz"
    prior.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.npz"]  # exactly that path, no temp left
    back = priorreg.Prior.load(path)
    assert np.array_equal(back.tables, prior.tables) and back.metadata() == prior.metadata()
    (tmp_path / "junk.npz").write_bytes(b"not a prior")
    _raises(r"is not a priorreg prior file", priorreg.Prior.load, tmp_path / "junk.npz")
    _raises(r"no such file", priorreg.Prior.load, tmp_path / "missing.npz")
    _raises(r"is a folder; give the prior's .npz file", priorreg.Prior.load, tmp_path)
    for bad in (np.nan, -0.1):  # a damaged table ran with a nan KL, or failed later as a non-finite energy
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["tables"] = arrays["tables"].copy()
        arrays["tables"][0, 0, 3, 3] = bad
        np.savez(tmp_path / "damaged.npz", **arrays)
        _raises(r"is corrupt \(its tables hold NaN, Inf or negative values\)", priorreg.Prior.load, tmp_path / "damaged.npz")
    with np.load(path) as z:  # a table of zeros was taken; only a KL warning hinted at it
        arrays = {k: z[k] for k in z.files}
    arrays["tables"] = arrays["tables"] * np.array([1.0, 0.0])[:, None, None, None]
    np.savez(tmp_path / "zeros.npz", **arrays)
    _raises(r"is corrupt \(a joint table sums to 0, not 1", priorreg.Prior.load, tmp_path / "zeros.npz")
    import json

    for change, match in ((dict(ranges=[[1.0, 0.0], [0.0, 1.0]]), "needs a finite low < high"),
                          (dict(n_pairs=0), "0 training pairs"), (dict(normalization="zscore"), "normalization 'zscore'"),
                          (dict(bins=None), "lacks or garbles a field")):  # each was loaded (or a KeyError/TypeError)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **change}))
        np.savez(tmp_path / "edited.npz", **arrays)
        _raises(match, priorreg.Prior.load, tmp_path / "edited.npz")
    _raises(r"pair 0 is not on one grid", fit_prior, [f], [m[:30]])
    on_grid = fit_prior([priorreg.Image(f, spacing=(0.9, 0.9), origin=(-20.0, 12.0))], [m])  # an array takes the Image's grid
    assert on_grid.n_pairs == 1
    _raises(r"pair 0 is not on one grid \(fixed and moving differ in origin \[0.0, 0.0\] vs \[5.0, 0.0\]", fit_prior,
            [priorreg.Image(f)], [priorreg.Image(m, origin=(5.0, 0.0))])
    _raises(r"need n >= 1 pairs", fit_prior, [], [])
    cube = np.random.default_rng(1).random((20, 20, 20))
    _raises(r"pair 1 is 3D but pair 0 is 2D", fit_prior, [f, cube], [m, cube])


def test_regional_prior_round_trip_version_1_files_and_refusals(pair, tmp_path):
    f, m = pair
    prior = fit_prior([f], [m], bins=16, parzen_sigma=1.0, levels=2, regions=(2, 3))
    assert prior.tables.shape == (2, 6, 16, 16) and prior.regions == (2, 3)
    assert np.allclose(prior.tables.sum((2, 3)), 1.0) and np.allclose(prior.region_mass.sum(1), 1.0)
    # The regions' tables weighted by their mass give back the global prior.
    glob = fit_prior([f], [m], bins=16, parzen_sigma=1.0, levels=2)
    assert np.allclose(prior.global_table(1), glob.tables[1, 0], atol=1e-12)
    prior.save(tmp_path / "r.npz")
    back = priorreg.Prior.load(tmp_path / "r.npz")
    assert np.array_equal(back.tables, prior.tables) and np.array_equal(back.region_mass, prior.region_mass)
    assert back.metadata() == prior.metadata()
    # A version-1 file (global tables of shape (levels, B, B), no regions) still loads.
    meta = dict(glob.metadata(), version=1)
    del meta["regions"]
    np.savez(tmp_path / "v1.npz", tables=glob.tables[:, 0], meta=np.array(json.dumps(meta)))
    old = priorreg.Prior.load(tmp_path / "v1.npz")
    assert old.regions == (1, 1) and np.array_equal(old.tables, glob.tables)
    _raises(r"regions must be an integer >= 1 or 2 of them", fit_prior, [f], [m], regions=(2, 0))
    _raises(r"regions must be an integer >= 1 or 2 of them", fit_prior, [f], [m], regions=(2, 2, 2))
    _raises(r"regions=\[40, 40\] is too fine", fit_prior, [f], [m], levels=2, regions=40)


def test_a_regional_prior_of_other_fields_of_view_is_named(pair, tmp_path):
    """A regional prior trained on pairs of different fields of view, or used on a fixed image of another, was
    taken without a word (a new-user pass): its regions are blocks of the grid, other anatomy in each frame."""
    f, m = pair
    crop = (slice(0, f.shape[0] * 3 // 4), slice(None))
    with pytest.warns(PriorRegWarning, match=r"training pairs' fields of view differ \(.* mm and .* mm\)"):
        fit_prior([f, f[crop]], [m, m[crop]], bins=16, levels=2, regions=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior = fit_prior([f, np.flip(f, 1)], [m, np.flip(m, 1)], bins=16, levels=2, regions=2)  # one frame
        fit_prior([f, f[crop]], [m, m[crop]], bins=16, levels=2)  # a global prior has no frame
    prior.save(tmp_path / "r.npz")
    prior = priorreg.Prior.load(tmp_path / "r.npz")
    assert prior.notes["extent_mm"] == [float(n) for n in f.shape]  # 1 mm voxels
    said = lambda fixed, moving: [w for w in register(fixed, moving, prior=prior, alpha=0.5, levels=2, max_iterations=2, bins=16,
                                                      warn=False).warnings if "the prior is regional" in w]
    assert said(f, m) == []
    (w,) = said(f[crop], m[crop])
    assert f"learned on a field of view of {f.shape[1]} x {f.shape[0]} mm" in w, w


@pytest.mark.slow
def test_regional_prior_decides_the_circle_phantom():
    # docs/method.md §9.2 / the paper's Fig. 1: f1 has a small and a big disc; the moving disc
    # overlaps both equally. A global histogram prior only knows the class proportions, so
    # it cannot say which disc; a regional prior knows where the pair (disc, disc) occurs.
    # The benchmark's 256 x 256 "close" layout. The disc must travel and change size
    # by a third; the edge-driven flow needs more than the default 300 iterations a level.
    n, rs, rb, rm, gap = 256, 20.0, 36.0, 29.1, 2.0
    yy, xx = np.indices((n, n), dtype=float)
    cy, x0 = n / 2, n / 2 - (rs + rb + gap) / 2
    disc = lambda c, r: ((yy - cy) ** 2 + (xx - c) ** 2 <= r * r).astype(float)  # noqa: E731
    small, big = disc(x0, rs), disc(x0 + rs + rb + gap, rb)
    lo, hi = x0, x0 + rs + rb + gap  # moving centre with equal overlaps (bisection)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (disc(mid, rm) * small).sum() > (disc(mid, rm) * big).sum() else (lo, mid)
    blur = lambda a: ndimage.gaussian_filter(a, 1.0)  # noqa: E731
    f1, f2 = blur(np.maximum(small, big)), blur(1 - 0.8 * disc(lo, rm))
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    for target, other in ((small, big), (big, small)):
        prior = fit_prior([f1], [blur(1 - 0.8 * target)], levels=3, regions=8)
        r = register(f1, f2, prior=prior, alpha=0.0, max_iterations=1500)
        w = r.warped.array < 0.6
        assert dice(w, target > 0.5) > 0.85 and dice(w, other > 0.5) < 0.15, (dice(w, target > 0.5), dice(w, other > 0.5))
        assert r.jacobian_stats["percent_nonpositive"] == 0


def test_flat_foreground_is_normalised_by_min_and_max():
    # A binary-like image: above Otsu everything is 1 up to rounding noise of a blur. The
    # noise must not become the unit of intensity (it blew the image up by 1e8 before).
    yy, xx = np.indices((256, 256))
    img = ndimage.gaussian_filter(1.0 - 0.8 * (((yy - 128) ** 2 + (xx - 128) ** 2) < 36**2), 1.0)
    out = priorreg.intensity.normalize(img)
    assert np.isclose(out.min(), 0.0) and np.isclose(out.max(), 1.0)


def test_prior_normalisation_is_invariant_to_gain_and_offset(pair):
    f, m = pair
    p1 = fit_prior([f], [m], bins=16, parzen_sigma=1.0, levels=1)
    p2 = fit_prior([2.5 * f + 100], [0.8 * m - 3], bins=16, parzen_sigma=1.0, levels=1)
    assert np.allclose(p1.tables, p2.tables, atol=1e-9)


@cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_and_cuda_agree(dtype):
    f, m, v, lab = syn.case((64, 72), syn.PD_NONMONO, max_disp=3.0)
    prior = fit_prior([f], [syn.deform(m, v)], bins=32, parzen_sigma=1.0, levels=2)
    kw = dict(prior=prior, alpha=0.4, levels=2, bins=32, parzen_sigma=1.0, max_iterations=20, dtype=dtype)
    rc = register(f, m, device="cpu", **kw)
    rg = register(f, m, device="cuda", **kw)
    assert_same_solution(rc, rg, v, _body(lab, v))


def test_non_finite_energy_stops_with_level_and_iteration():
    from priorreg.regularizer import Tikhonov
    from priorreg.solver import gradient_flow

    class Exploding:
        """A data term that turns NaN after its first evaluation."""

        calls = 0

        def evaluate(self, u, with_force):
            self.calls += 1
            value = 1.0 if self.calls == 1 else float("nan")
            return {"X": value}, value, torch.ones_like(u)

        def force(self, u):  # the solver asks each data term for its force at u
            return self.evaluate(u, True)[2]

    u = torch.zeros(2, 16, 16)
    with pytest.raises(PriorRegError, match=r"non-finite at level 1/3, iteration 1"):
        gradient_flow([Exploding()], Tikhonov(1.0, (1.0, 1.0)), u, RegistrationOptions(), 2, (1.0, 1.0))


def test_a_non_finite_force_stops_instead_of_halving_the_step_forever():
    """A NaN in the force made every trial step NaN, which no step-size test caught: the step loop ran
    forever (seen with a starting transform that left no overlap)."""
    from priorreg.regularizer import Tikhonov
    from priorreg.solver import gradient_flow

    class NanForce:
        calls = 0

        def evaluate(self, u, with_force):
            self.calls += 1
            force = torch.ones_like(u)
            if self.calls > 1:
                force[0, 3, 3] = float("nan")
            return {"X": 1.0}, 1.0 - 1e-3 * self.calls, force if with_force else None

        def force(self, u):
            return self.evaluate(u, True)[2]

    u = torch.zeros(2, 16, 16)
    with pytest.raises(PriorRegError, match=r"force became non-finite at level 2/3, iteration 2"):
        gradient_flow([NanForce()], Tikhonov(1.0, (1.0, 1.0)), u, RegistrationOptions(), 1, (1.0, 1.0))


def test_masked_registration_recovers_the_warp_inside_the_mask():
    f, m, v, lab = syn.case((96, 112), syn.T2_MONO, max_disp=4.0)
    from scipy import ndimage

    body = _body(lab, v)
    # A mask with a margin around the body, as users draw them: the body outline is the
    # strongest edge and must lie inside the sample set.
    r = register(f, m, mask=ndimage.binary_dilation(body, iterations=4), levels=3, **SMOOTH)
    assert _epe(r.field, v, body) < 0.5
    assert r.jacobian_stats["percent_nonpositive"] == 0


def test_a_mask_on_a_small_part_of_the_grid_does_not_soften_the_field():
    # The body padded into a grid 6x its size; a mask on the body (16 % of the grid). The data terms
    # average over the mask, the regulariser over the grid: unscaled, the mask pulled 6x harder per
    # voxel (error 0.189 against 0.159 without a mask); with the regulariser divided by the mask's
    # share the masked run is as good as the unmasked one (0.143).
    f, m, v, lab = syn.case((96, 112), syn.T2_MONO, max_disp=4.0)
    body, p = _body(lab, v), 48
    f, m = (np.pad(a, p, constant_values=float(np.median(a[:3]))) for a in (f, m))
    v, body = np.stack([np.pad(c, p) for c in v]), np.pad(body, p)
    mask = ndimage.binary_dilation(body, iterations=2)
    masked, plain = register(f, m, mask=mask, levels=3, warn=False), register(f, m, levels=3, warn=False)
    assert _epe(masked.field, v, body) < _epe(plain.field, v, body) + 0.01
    from priorreg import deformable

    assert deformable.mask_share(torch.as_tensor(mask, dtype=torch.float64)) == pytest.approx(mask.mean())
    assert deformable.mask_share(None) == 1.0


def test_prior_survives_a_change_of_intensity_scale_and_helps_mi():
    # docs/method.md §9.3: with stored raw ranges a test image at gain 0.8 made alpha=0 worse
    # than no registration. The foreground-percentile normalisation makes the prior see
    # the same bins whatever the gain and offset, so the result must not change at all.
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=4.0)
    lab_t = syn.anatomy((96, 112), seed=5)
    prior = fit_prior(
        [syn.contrast(lab_t, syn.T1, seed=40)], [syn.contrast(lab_t, syn.PD_NONMONO, seed=41)], bins=32, parzen_sigma=1.0
    )
    mask = _body(lab, v)
    kw = dict(prior=prior, levels=3, bins=32, parzen_sigma=1.0)
    blend = register(f, m, alpha=0.4, **kw)
    blend_scaled = register(f, 0.8 * m + 0.1, alpha=0.4, **kw)
    assert np.allclose(blend.field, blend_scaled.field, atol=1e-4)
    # With the paper's membrane regulariser alone (lambda=1) MI wanders and the prior pulls
    # it back: measured 0.68 (alpha=0.4) vs 0.86 voxel (MI). With the default bending term
    # MI itself is well posed here and this prior (another anatomy) no longer helps
    # (measured 0.39 vs 0.32): the prior's gain is a regularisation effect, said in the README.
    paper = dict(kw, regularization=1.0, bending=0.0, warn=False)  # MI alone folds here (3 %): the point of the test
    blend_p = register(f, m, alpha=0.4, **paper)
    mi_p = register(f, m, alpha=1.0, **paper)
    assert _epe(blend_p.field, v, mask) < _epe(mi_p.field, v, mask) - 0.05
    mi = register(f, m, alpha=1.0, **kw)
    assert _epe(mi.field, v, mask) < _epe(mi_p.field, v, mask) - 0.3


def test_image_accepts_a_reversed_direction_view():
    # SimpleITK's matrix reversed to array order is a negative-stride view; warp must take it.
    d = np.array([[0.0, 1.0], [1.0, 0.0]])[:, ::-1]
    img = Image(np.arange(48.0).reshape(6, 8), direction=d)
    assert np.allclose(warp(img, np.zeros((2, 6, 8))).array, img.array)


def test_a_small_field_is_noted_and_a_large_one_is_not():
    """A field of the order of the default's error floor says the pair may have been aligned already
    (priorreg.result.small_field_notes); a real warp's field does not."""
    from priorreg.result import SMALL_FIELD_VOXELS, small_field_notes

    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=4.0)
    assert small_field_notes(v, (1.0, 1.0), lab > 0) == []
    note = small_field_notes(0.1 * v, (1.0, 1.0), lab > 0)
    assert len(note) == 1 and note[0].startswith("register(): the field is small (mean")
    assert small_field_notes(0.1 * v, (1.0, 1.0), None)  # no mask: every voxel
    mm = np.stack([np.full((8, 8), 1.6 * SMALL_FIELD_VOXELS), np.zeros((8, 8))])  # a field in mm, read in voxels
    assert small_field_notes(mm, (2.0, 1.0), None) and not small_field_notes(mm, (1.0, 2.0), None)
    anatomy = syn.anatomy((64, 72), seed=3)
    with pytest.warns(PriorRegWarning, match=r"the field is small"):
        aligned = register(syn.contrast(anatomy, syn.T1, seed=1), syn.contrast(anatomy, syn.T2_MONO, seed=2), levels=2)
    assert any("the field is small" in w for w in aligned.warnings)
    moved = register(f, m, levels=2, warn=False)
    assert not any("the field is small" in w for w in moved.warnings)


def test_the_small_field_note_counts_a_coarser_moving_image_s_voxels():
    """An aligned 3D BraTS pair with a 4 mm moving image on a 2 mm grid ended 1.46 mm off (0.73 fixed voxel)
    without the note: the error floor is in the coarser image's voxels, which the working grid only takes at
    2.5 x or more."""
    anatomy = syn.anatomy((32, 36, 28), seed=4)
    fixed = Image(syn.contrast(anatomy, syn.T1, seed=1))
    moving = Image(syn.contrast(anatomy, syn.T2_MONO, seed=2)[::2, ::2, ::2], spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5))
    res = register(fixed, moving, levels=2, max_iterations=30, warn=False)
    assert any(w.startswith("register(): the field is small") and "voxel of 2 x 2 x 2 mm" in w for w in res.warnings), res.warnings
    # 1 mm voxels on a grid turned 30 degrees are still 1 mm (a sum of extents made them 1.37)
    lab = syn.anatomy((64, 64), seed=3)
    t = np.deg2rad(30)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    grid = Image(np.zeros((90, 90)), (1.0, 1.0), origin=tuple(np.array([32, 32]) - R @ np.array([45, 45])), direction=R)
    turned = warp(Image(syn.contrast(lab, syn.T2_MONO, seed=2), (1.0, 1.0)), None, reference=grid, allow_empty=True)
    res = register(Image(syn.contrast(lab, syn.T1, seed=1), (1.0, 1.0)), turned, levels=2, max_iterations=30,
                   linear="none", warn=False)
    assert any("the field is small" in w and "voxel of 1 x 1 mm" in w for w in res.warnings), res.warnings


def test_the_small_field_note_measures_where_the_nearly_aligned_rule_does(monkeypatch):
    """Without a mask both read the fixed image's Otsu foreground (the field in an empty background is
    not what was aligned); with a mask, the mask with the margin its samples get (image.with_margin)."""
    from priorreg import api
    from priorreg.intensity import foreground

    seen = []
    real = api.small_field_notes
    monkeypatch.setattr(api, "small_field_notes", lambda field, spacing, region: seen.append(region) or real(field, spacing, region))
    f, m, v, lab = syn.case((48, 56), syn.T2_MONO, max_disp=3.0)
    register(f, m, levels=2, max_iterations=5, warn=False)
    register(f, m, levels=2, max_iterations=5, warn=False, mask=lab > 0)
    np.testing.assert_array_equal(seen[0], foreground(f))
    assert seen[0].any() and not seen[0].all()
    from priorreg.image import with_margin

    np.testing.assert_array_equal(seen[1] > 0, with_margin((lab > 0).astype(float), (1.0, 1.0)) > 0)
    assert (seen[1] > 0).sum() > (lab > 0).sum()


def test_a_nearly_aligned_pair_is_refined_with_a_stiffer_field(monkeypatch):
    """The default presets stiffen the finest level when the coarser levels moved the pair by less than
    NEARLY_ALIGNED_VOXELS on average (priorreg.deformable.coarse_displacement), and start it again from the
    start field (here none: no linear stage); a real warp keeps the weight and the coarser levels' field."""
    from priorreg import deformable
    from priorreg.deformable import NEARLY_ALIGNED_VOXELS

    starts = []  # the field each level's solver starts from, finest last
    real = deformable.gradient_flow
    monkeypatch.setattr(deformable, "gradient_flow", lambda data, reg, u, *a: starts.append(u.clone()) or real(data, reg, u, *a))
    anatomy = syn.anatomy((96, 112), seed=3)
    aligned = (syn.contrast(anatomy, syn.T1, seed=1), syn.contrast(anatomy, syn.T2_MONO, seed=2))
    f, m, v, lab = syn.case((96, 112), syn.T2_MONO, max_disp=5.0)
    kw = dict(levels=3, linear="none", warn=False)
    near = register_with_presets(*aligned, **kw)
    assert starts[1].abs().max() > 0 and starts[2].abs().max() == 0  # the coarser levels moved it; the finest starts at 0
    far = register_with_presets(f, m, **kw)
    assert starts[-1].abs().max() > 0  # the coarser levels' field is kept
    off = register_with_presets(*aligned, nearly_aligned_stiffness=1.0, **kw)
    rec = [r.history[-1].coarse_displacement for r in (near, far)]
    assert near.options.nearly_aligned_stiffness == 4.0
    assert rec[0]["mean_voxels"] < NEARLY_ALIGNED_VOXELS and rec[0]["bending_factor"] == 4.0
    assert rec[1]["mean_voxels"] > NEARLY_ALIGNED_VOXELS and rec[1]["bending_factor"] == 1.0
    assert near.as_dict()["levels"][-1]["coarse_displacement"] == rec[0]
    assert "coarse_displacement" not in off.as_dict()["levels"][-1]  # switched off: not measured
    # The stiffer field moves the aligned pair less than the weight the large warp needs.
    size = lambda r: float(np.sqrt((r.field**2).sum(0))[anatomy > 0].mean())  # noqa: E731
    assert size(near) < size(off)
    assert "coarse_displacement" not in register_with_presets(*aligned, levels=1, **{"linear": "none", "warn": False}).as_dict()["levels"][-1]
    with pytest.raises(PriorRegError, match="nearly_aligned_stiffness must be a number > 0"):
        RegistrationOptions(nearly_aligned_stiffness=0)


def test_folding_and_a_moving_image_that_covers_little_of_the_anatomy_are_noted():
    """A run that folded 2.3 % of the voxels, or left 94 % of the fixed image without moving-image data,
    finished without a word (new-user pass); now each is one warning line."""
    from types import SimpleNamespace

    from priorreg.result import outcome_notes

    region = np.zeros((10, 10), bool)
    region[2:8, 2:8] = True
    fov = np.zeros((10, 10), bool)
    fov[:, :3] = True  # covers 1 of the region's 6 columns
    run = lambda fold, fov: outcome_notes(SimpleNamespace(jacobian_stats={"percent_nonpositive": fold, "min": -0.07},
                                                          fov=fov, moving=None, warped=None), region)
    assert run(0.0, np.ones((10, 10), bool)) == [] and run(0.05, None) == []
    fold, cover = run(2.3, fov)
    assert fold.startswith("register(): the field folds 2.30% of the voxels (Jacobian min -0.070)")
    assert cover.startswith("register(): the moving image covers only 17% of the fixed image's anatomy")
    f, m, v, lab = syn.case((48, 56), syn.T2_MONO, max_disp=3.0)
    slab = m.copy()
    slab[:, 22:] = 0.0  # the moving image has data in its first 22 columns only: a slab
    with pytest.warns(PriorRegWarning, match="covers only"):
        r = register(Image(f), Image(slab[:, :22]), levels=2, max_iterations=5, linear="none")
    assert any("covers only" in w for w in r.warnings)


def test_a_plain_array_beside_an_image_is_on_its_grid_and_spacing_is_for_arrays(pair):
    """Third new-user pass: register(image, array) put the array at the origin with spacing 1 (a wrong result,
    no word), spacing= silently replaced the Images' own spacing, and result.apply(array) of a moving image
    away from the origin returned zeros."""
    f, m = pair
    fixed = Image(f, spacing=(1.5, 1.0), origin=(4.0, -3.0))
    moving = Image(m, spacing=(1.5, 1.0), origin=(4.0, -3.0))
    kw = dict(levels=2, max_iterations=4, linear="none")
    both = register(fixed, moving, **kw)
    np.testing.assert_array_equal(register(fixed, m, **kw).field, both.field)
    np.testing.assert_array_equal(register(f, moving, **kw).field, both.field)
    np.testing.assert_array_equal(register(fixed, torch.as_tensor(m), **kw).field, both.field)  # a tensor too
    _raises(r"moving is a plain array of shape \(30, 36\) beside a priorreg.Image of shape \(32, 36\)",
            register, fixed, m[:30], **kw)
    _raises(r"spacing= is for plain arrays", register, fixed, moving, spacing=(2.0, 2.0), **kw)
    np.testing.assert_array_equal(both.apply(m).array, both.apply(moving).array)
    assert np.abs(both.apply(m).array).mean() > 0.5 * np.abs(m).mean()
    _raises(r"apply\(\): image is a plain array of shape \(30, 36\)", both.apply, m[:30])


def test_far_outliers_are_clipped_and_a_squeezed_range_is_named():
    """Third new-user pass: a hot spot at 20x the brightest tissue (0.2 % of the slice) became Otsu's whole
    'foreground' and took the histogram's range, and the PET/CT pair was registered to 0.88 body Dice
    (0.99 without it), without a word; 1e300 in a float64 image became -inf in float32."""
    from importlib.resources import files

    from priorreg import intensity
    from priorreg import io as pio

    brainweb = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(brainweb / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    a = m.array.astype(np.float64)
    hot = a.copy()
    hot[100:110, 60:70] = 20 * a.max()  # 21 core spans beyond the 99th percentile
    warm = a.copy()
    warm[100:110, 60:70] = 5 * a.max()  # about 6 spans: left as it is, but named
    assert intensity.far_outlier_bounds(warm) is None and intensity.far_outlier_bounds(a) is None
    assert intensity.far_outlier_bounds(hot)[1] == np.percentile(hot, 99)
    body = a > intensity.otsu_threshold(a)
    keep = body & (hot == a)  # the body keeps its scale: the hot spot is not the 'foreground'
    np.testing.assert_allclose(np.percentile(intensity.normalize(hot)[keep], (10, 50, 90)),
                               np.percentile(intensity.normalize(a)[keep], (10, 50, 90)), atol=0.05)
    kw = dict(levels=2, max_iterations=10)
    clean = register(f, m, warn=False, **kw)
    spot = register(f, m.with_array(hot), warn=False, **kw)
    inside = np.abs(np.asarray(clean.field) - np.asarray(spot.field)).max(0)[body]
    assert np.mean(inside) < 0.1, np.mean(inside)  # mm: the hot spot does not move the body
    with pytest.warns(PriorRegWarning, match=r"moving image's voxels .* span only \d+% of its histogram range"):
        register(f, m.with_array(warm), **kw)
    with warnings.catch_warnings(record=True) as caught:  # the plain pair: no such warning
        warnings.simplefilter("always")
        register(f, m, **{**kw, "max_iterations": 2})
    assert not [w for w in caught if "histogram range" in str(w.message)]
    huge = a.copy()
    huge[0, 0] = -1e300
    _raises(r"moving has values up to 1e\+300 in magnitude, beyond single precision", register, f, m.with_array(huge))


def test_a_prior_with_no_weight_changes_nothing():
    """Third new-user pass: an MR prior given to a PET/CT pair got no weight at any level ('the result is
    mutual information alone'), yet the run used the prior's histogram ranges, in the linear stage too,
    and ended elsewhere (body Dice 0.982 against 0.992). At alpha = 1 a level now runs as without the prior."""
    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=3.0)
    lab_t = syn.anatomy((64, 72), seed=5)
    prior = fit_prior([syn.contrast(lab_t, syn.T1, seed=40) * 3.0], [syn.contrast(lab_t, syn.T2_MONO, seed=41)], levels=2)
    kw = dict(levels=2, max_iterations=8, linear="affine")
    alone = register(f, m, **kw)
    given = register(f, m, prior=prior, alpha=1.0, **kw)
    assert given.ranges != alone.ranges  # the report keeps the prior's ranges; the energy does not use them
    np.testing.assert_array_equal(given.field, alone.field)
    assert not any("KL" in t for h in given.history for t in h.terms)
    assert repr(prior).startswith("Prior(2D, 1 pair(s), bins=64") and len(repr(prior)) < 200  # not every table
    assert repr(Image(np.zeros((400, 500)), (0.5, 2.0))) == "Image(2D 400x500, spacing (0.5, 2) mm, origin (0, 0) mm, float64)"


def test_a_fixed_alpha_with_a_prior_far_from_the_registered_pair_is_named():
    """Third new-user pass: --alpha 0.4 with a prior of another modality pair gave no warning (where alpha
    'auto' would have given it no weight), and a worse result. The prior of the right pair is not named."""
    f, m, v, lab = syn.case((64, 72), syn.T2_MONO, max_disp=3.0)
    lab_t = syn.anatomy((64, 72), seed=5)
    right = fit_prior([syn.contrast(lab_t, syn.T1, seed=40)], [syn.contrast(lab_t, syn.T2_MONO, seed=41)], levels=2)
    wrong = fit_prior([syn.contrast(lab_t, syn.T1, seed=40)], [syn.contrast(lab_t, syn.PD_NONMONO, seed=41)], levels=2)
    said = {}
    for name, prior in (("right", right), ("wrong", wrong)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            register(f, m, prior=prior, alpha=0.4, levels=2, max_iterations=20)
        said[name] = [str(w.message) for w in caught if "alpha='auto' would give it none" in str(w.message)]
    assert not said["right"] and len(said["wrong"]) == 1 and "alpha=0.4 gave the prior weight 0.6" in said["wrong"][0]


def test_a_thin_stack_gets_the_levels_it_allows_unless_levels_are_given():
    # 9 thick slices (as the spinal-cord T2* stack): the default's 3 levels would leave 3 slices at the
    # coarsest; without levels= the run takes the 2 it allows, with levels=3 asked for it is refused.
    from priorreg import pyramid

    assert [pyramid.max_levels(s) for s in ((9, 54, 49), (3, 40), (16, 16), (17, 100), (32, 100))] == [2, 1, 3, 3, 4]
    rng = np.random.default_rng(0)
    f = ndimage.gaussian_filter(rng.random((9, 40, 36)), 2.0)
    m = np.roll(f, 1, axis=2) ** 2
    r = priorreg.register(f, m, max_iterations=5, warn=False)  # the default preset
    assert r.options.levels == 2 and len(r.history) == 2
    assert any("2 pyramid level(s): an image of shape (9, 40, 36) is too small for 3" in w for w in r.warnings)
    _raises(r"levels=3 shrinks an image of shape \(9, 40, 36\)", priorreg.register, f, m, levels=3)
    _raises(r"levels=3 shrinks", priorreg.register, f, m, options=RegistrationOptions(levels=3))  # taken as given


def test_a_mask_gets_a_2mm_margin_in_whole_voxels():
    from priorreg.image import with_margin

    m = np.zeros((9, 21, 21))
    m[4, 10, 10] = 1
    thick = with_margin(m, (7.5, 0.5, 0.5))  # no margin across 7.5 mm slices, 4 voxels in-plane
    assert thick.sum(axis=(1, 2)).tolist() == [0, 0, 0, 0, 49, 0, 0, 0, 0] and thick[4, 10, 14] and not thick[4, 10, 15]
    assert with_margin(m, (1.0, 1.0, 1.0)).sum() == 33  # the ball of radius 2 voxels
    assert np.array_equal(with_margin(m, (5.0, 5.0, 5.0)), m) and with_margin(None, (1.0,) * 3) is None


def test_fit_prior_gives_its_masks_the_margin_register_gives(monkeypatch):
    from priorreg import prior as prior_module
    from priorreg.image import with_margin

    f, m, v, lab = syn.case((48, 40), syn.T2_MONO, max_disp=1.0)
    mask = (lab > 0).astype(float)
    a = fit_prior([f], [m], masks=[mask], levels=1, bins=32)
    monkeypatch.setattr(prior_module, "with_margin", lambda mk, spacing: mk)
    b = fit_prior([f], [m], masks=[with_margin(mask, (1.0, 1.0))], levels=1, bins=32)
    tight = fit_prior([f], [m], masks=[mask], levels=1, bins=32)
    assert np.allclose(a.tables, b.tables) and not np.allclose(a.tables, tight.tables)


def test_fit_prior_warns_about_a_training_pair_that_is_not_aligned(tmp_path):
    """A pair shifted by 3 voxels is named (index, voxels, mm, axis as i/j); aligned ones and 1 voxel are not."""
    from importlib.resources import files

    from priorreg import io as pio

    brainweb = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(brainweb / n).array.astype(float) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_prior([f, f], [m, np.roll(m, 1, axis=0)], levels=1, spacing=(2.0, 1.0))  # no warning
    with pytest.warns(PriorRegWarning) as said:
        prior = fit_prior([f, f, f], [m, np.roll(m, 3, axis=0), np.roll(m, -2, axis=1)], levels=1, spacing=(2.0, 1.0))
    msgs = [str(w.message) for w in said]
    # kept with the prior, and said again where it is used (a new user registered with it and read nothing)
    prior.save(tmp_path / "p.npz")
    assert priorreg.Prior.load(tmp_path / "p.npz").notes["misaligned_pairs"] == [1, 2]
    res = register_with_presets(f, m, prior=priorreg.Prior.load(tmp_path / "p.npz"), alpha=0.4, spacing=(2.0, 1.0),
                                levels=1, max_iterations=2, warn=False)
    assert any(w.startswith("register(): the prior was learned from 2 of 3 training pair(s) that did not look aligned")
               for w in res.warnings), res.warnings
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("fit_prior(): training pair 1 does not look aligned") and "3 voxels (6 mm) along j" in msgs[0]
    assert msgs[1].startswith("fit_prior(): training pair 2 does not look aligned") and "2 voxels (2 mm) along i" in msgs[1]
    with pytest.warns(PriorRegWarning, match="by 6 voxels \\(6 mm\\) along i"):  # past the every-voxel window: not "4"
        fit_prior([f], [np.roll(m, 6, axis=1)], levels=1)
    with pytest.warns(PriorRegWarning, match="by 16 or more voxels \\(16 or more mm\\) along i"):  # the search's end
        fit_prior([f], [np.roll(m, 20, axis=1)], levels=1)
    # Inside a mask only: a pair aligned there (and shifted outside it, where the prior learns nothing) is fine.
    half = np.concatenate([m[:70], np.roll(m, 3, axis=1)[70:]])
    mask = np.zeros(f.shape)
    mask[:60] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_prior([f], [half], masks=[mask], levels=1)
    with pytest.warns(PriorRegWarning, match="3 voxels"):
        fit_prior([f], [half], levels=1)


# --------------------------------------------------------------------------- a new user's pass over the API


def test_flipped_float64_views_register_and_warp_as_their_copies():
    """``x[::-1]`` of a float64 array (nibabel's get_fdata, reoriented) is a negative-stride view, which torch
    refuses: register ran to the end and then failed in the warp; warp and initial_field failed at once."""
    f, m, _, _ = syn.case((32, 36), syn.T2_MONO, max_disp=1.0)
    f, m = np.asarray(f, np.float64), np.asarray(m, np.float64)
    kw = dict(levels=2, max_iterations=5, linear="none")
    r = register(f[::-1], m[::-1], **kw)
    assert np.array_equal(r.field, register(f[::-1].copy(), m[::-1].copy(), **kw).field)
    zero = np.zeros((2, *f.shape))
    assert np.allclose(warp(f[::-1], zero).array, f[::-1], atol=1e-9)  # identity, up to interpolation's rounding
    assert np.allclose(warp(f, zero[:, ::-1]).array, f, atol=1e-9)
    init = register(f, m, initial_field=zero[:, ::-1], max_iterations=0, levels=1, linear="none")
    assert np.array_equal(init.field, zero)


def test_warp_beside_a_reference_takes_its_grid_and_refuses_what_it_cannot_mean():
    a = np.zeros((40, 50))
    a[10:20, 15:30] = 1
    ref = Image(np.zeros((40, 50)), spacing=(2.0, 1.0), origin=(30.0, -12.0))
    zero = np.zeros((2, 40, 50))
    assert np.array_equal(warp(a, zero, reference=ref).array, a)  # a plain array on the reference grid
    _raises(r"give spacing only without a reference", warp, a, zero, reference=ref, spacing=(2.0, 1.0))  # was: the object vanished
    _raises(r"reference must be a priorreg.Image .*got ndarray", warp, a, zero, reference=a)


@pytest.mark.parametrize("fill", [-1, 300, 0.6])
def test_a_nearest_fill_the_labels_dtype_cannot_hold_is_refused(fill):
    lab = np.tile(np.arange(20, dtype=np.uint8), (8, 1))
    f = np.zeros((2, 8, 20))
    f[1] = 5.0
    _raises(r"fill=.* cannot be stored in the labels' dtype uint8 \(whole numbers 0 to 255\)", warp, lab, f,
            interpolation="nearest", fill=fill)
    out = warp(lab, f, interpolation="nearest", fill=7).array  # one it can: kept, and the dtype too
    assert out.dtype == np.uint8 and list(out[0, 15:]) == [7] * 5
    assert warp(lab.astype(np.float32), f, interpolation="nearest", fill=-1).array[0, -1] == -1


@pytest.mark.parametrize("n", [8, 16, 24])
def test_a_small_slice_runs_with_no_flags(n):
    """The linear stage takes as many levels as keep 64 samples: 16 x 16 and 24 x 24 slices were refused
    ("needs 64 ... use fewer levels") by a user who had set no levels."""
    f = ndimage.gaussian_filter(np.random.default_rng(0).random((n, n)), 1.5)
    r = register_with_presets(f, np.roll(f, 1, 0) ** 2, warn=False)
    assert r.linear is not None and r.field.shape == (2, n, n)


def test_a_prior_that_alpha_one_leaves_unused_is_reported():
    f, m, _, _ = syn.case((32, 36), syn.T2_MONO, max_disp=1.0)
    prior = fit_prior(f, m, bins=32, parzen_sigma=1.0, levels=2)
    opts = RegistrationOptions(levels=2, bins=32, parzen_sigma=1.0, max_iterations=3)
    with pytest.warns(PriorRegWarning, match=r"a prior was given but options= has alpha 1, so the prior is not used"):
        register_with_presets(f, m, prior=prior, options=opts)
    short = dict(levels=2, max_iterations=3)
    for kw in (dict(options=opts, alpha=1.0), dict(alpha=1.0, **short), short):  # alpha 1 by name: as asked; auto weighs it
        r = register_with_presets(f, m, prior=prior, warn=False, **kw)
        assert not any("prior is not used" in w for w in r.warnings), kw


def test_bad_masks_and_origins_and_warn_are_one_clear_error(pair):
    f, m = pair
    _raises(r"mask is text \(brain_mask.nii.gz\); read a file", register, f, m, mask="brain_mask.nii.gz")
    _raises(r"mask must be an array of real numbers .*got dtype object", register, f, m, mask=np.full(f.shape, None))
    _raises(r"mask must be an array of real numbers .*complex", register, f, m, mask=np.ones(f.shape, complex))
    _raises(r"origin must be finite", Image, f, origin=(np.nan, 0.0))
    _raises(r"warn must be True or False", register, f, m, warn="no")


def test_a_result_prints_in_one_line(pair):
    r = register(*pair, levels=1, max_iterations=3)
    text = repr(r)
    assert text.startswith("RegistrationResult(2D 32x36, preset=") and "\n" not in text and len(text) < 200


def test_more_mind_channels_than_there_are_is_refused(pair):
    """mind_channels=100 in 2D ran exactly as 0 (all four), without a word."""
    _raises(r"mind_channels=100, but MIND-SSC has 4 channels in 2D", register, *pair, mind_channels=100)
    register(*pair, mind_channels=4, mind_weight=1.0, levels=1, max_iterations=2)  # all of them, by number


def test_parallel_slices_further_apart_than_a_slice_are_warned_about(tmp_path):
    import SimpleITK as sitk

    from priorreg import io as pio

    a = np.random.default_rng(0).random((1, 40, 48)).astype(np.float32)
    for z, name in ((0.0, "f"), (2.0, "near"), (24.0, "far")):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing((1.0, 1.0, 2.0))
        im.SetOrigin((0.0, 0.0, z))
        sitk.WriteImage(im, str(tmp_path / f"{name}.nii.gz"))
    f = pio.read_image(tmp_path / "f.nii.gz")
    kw = dict(levels=1, max_iterations=2, warn=False, linear="none")
    near = priorreg.register(f, pio.read_image(tmp_path / "near.nii.gz"), **kw)  # within a slice: no warning
    assert not [w for w in near.warnings if "slice's plane" in w]
    far = priorreg.register(f, pio.read_image(tmp_path / "far.nii.gz"), **kw)
    assert [w for w in far.warnings if "lies 24.0 mm from the fixed slice's plane (slices 2 mm thick)" in w]


def test_images_apart_as_their_headers_place_them_are_warned_about_once_the_linear_stage_joins_them(tmp_path):
    from importlib.resources import files

    from priorreg import io as pio

    brainweb = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(brainweb / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    far = priorreg.Image(m.array, m.spacing, (500.0, -300.0), m.direction)  # an origin off by 583 mm
    kw = dict(levels=1, max_iterations=3, warn=False)
    r = priorreg.register(f, far, **kw)
    moved = [w for w in r.warnings if "an origin in a header is likely wrong" in w]
    assert moved and "only 0% of the fixed image's foreground" in moved[0], r.warnings
    assert "583." in moved[0]  # the anatomy found 583 mm away
    assert not [w for w in priorreg.register(f, m, **kw).warnings if "origin in a header" in w]
    import warnings

    with warnings.catch_warnings():  # applying that result to the moving space's labels: nothing to warn about
        warnings.simplefilter("error", PriorRegWarning)
        labels = far.with_array((far.array > np.median(far.array)).astype(np.uint8))
        assert r.apply(labels, interpolation="nearest").array.mean() > 0.3 * labels.array.mean()
    from priorreg.transform import LinearResult, write_itk_transform

    write_itk_transform(tmp_path / "start.tfm", LinearResult(np.eye(2), np.array(r.linear.translation_mm)), 2)
    given = priorreg.register(f, far, initial_transform=str(tmp_path / "start.tfm"), **kw)  # the user said where
    assert not [w for w in given.warnings if "origin in a header" in w], given.warnings


def test_a_moving_array_in_another_axis_order_or_mirrored_is_warned_about():
    """A nibabel array beside an Image, not transposed, registered silently wrong on a square slice (the
    linear stage turned it 83 degrees); so did a plain array turned 180 degrees. Neither stage can undo
    a swap or a mirror: the result says so. The right pair gets no such warning."""
    from importlib.resources import files

    from priorreg import io as pio

    brainweb = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(brainweb / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    fixed, moving = f.with_array(f.array[20:200, :180].copy()), m.array[20:200, :180].astype(np.float64)
    kw = dict(warn=False, max_iterations=20)
    said = lambda r: [w for w in r.warnings if "matches the fixed one far better" in w]  # noqa: E731
    assert not said(priorreg.register(fixed, moving.copy(), **kw))
    (swap,) = said(priorreg.register(fixed, moving.T.copy(), **kw))
    assert "with its array axes in the order (1, 0)" in swap and "nibabel array must be transposed" in swap
    (turn,) = said(priorreg.register(fixed, moving[::-1, ::-1].copy(), **kw))
    assert "mirrored along its array axis 0, 1" in turn
    # Not square (a new user's 216 x 256 IXI crop, transposed, registered 88 degrees off without a word): the
    # variants are of the moving image's own array, whatever its shape.
    tall = f.with_array(f.array[10:210, 20:160].copy())
    (swap,) = said(priorreg.register(tall, priorreg.Image(m.array[10:210, 20:160].T.copy(), tall.spacing), **kw))
    assert "with its array axes in the order (1, 0)" in swap
    assert not said(priorreg.register(tall, priorreg.Image(m.array[10:210, 20:160].copy(), tall.spacing), **kw))
    # Anisotropic pixels (0.7 x 1.3 mm): a variant's blocks are sized by the header position it stands at (a
    # review found the transpose scaled wrong, and missed).
    thin = priorreg.Image(f.array, (0.7, 1.3))
    (swap,) = said(priorreg.register(thin, priorreg.Image(np.ascontiguousarray(m.array.T), (0.7, 1.3)), **kw))
    assert "with its array axes in the order (1, 0)" in swap
    # A band of the moving slice over under half the fixed anatomy: nothing to compare a variant with, no word
    # (a review saw a variant land more of its points inside, and a false warning).
    band = priorreg.Image(np.ascontiguousarray(m.array[62:138]), m.spacing, (0.0, 62.0))
    assert not said(priorreg.register(f, band, **kw))
    before = moving.copy()
    priorreg.register(fixed, moving, **kw)
    assert np.array_equal(moving, before)  # the check reads views of the input, never writes
    one = np.zeros(fixed.shape, bool)
    one[90, 90] = True  # a one-voxel mask (a 2 mm margin): too few samples to judge a mirror by
    assert not said(priorreg.register(fixed, moving.copy(), mask=one, linear="none", levels=1, **kw))


def test_a_volume_with_two_axes_swapped_or_mirrored_is_warned_about():
    """A new user's BraTS T1c with its x and z axes swapped (header unchanged), and one mirrored left-right,
    registered silently wrong (tumour Dice 0): the variants are the moving volume's own, of any shape, compared
    before registration. The right volume gets no warning (a 2 mm blur had let a mirror of this small one win)."""
    f, m, v, lab = syn.case((24, 30, 20), syn.T2_MONO, max_disp=1.0, seed=0)
    kw = dict(warn=False, max_iterations=5, levels=2)
    said = lambda r: [w for w in r.warnings if "matches the fixed one far better" in w]  # noqa: E731
    assert not said(priorreg.register(f, m, **kw))
    fixed = priorreg.Image(f, (1.0, 1.0, 1.0))
    (swap,) = said(priorreg.register(fixed, priorreg.Image(np.ascontiguousarray(m.transpose(2, 1, 0)), (1.0, 1.0, 1.0)), **kw))
    assert "with its array axes in the order (2, 1, 0)" in swap
    (flip,) = said(priorreg.register(f, np.ascontiguousarray(m[:, ::-1]), **kw))
    assert "mirrored along its array axis 1" in flip


def test_a_mask_over_constant_background_is_refused_in_one_line():
    """A new user's mask in a background corner gave a traceback from the linear stage (IndexError), or from
    Otsu's bins with linear="none"; the training masks of fit_prior went through unwarned."""
    f, m, v, lab = syn.case((40, 48), syn.T2_MONO, max_disp=1.0)
    f = f.copy()
    f[:10, :10] = 0.0
    corner = np.zeros(f.shape, bool)
    corner[:9, :9] = True  # 81 voxels: fewer are left to the stages ("too small")
    for linear in ("affine", "none"):
        with pytest.raises(PriorRegError, match="covers only voxels where the fixed image is constant"):
            register(f, m, mask=corner, linear=linear, levels=1, max_iterations=2)
    with pytest.raises(PriorRegError, match="covers only voxels where the fixed image is constant"):
        priorreg.fit_prior([f], [m], masks=[corner], levels=1)


def test_unrelated_images_are_warned_about():
    """A new user's BrainWeb T1 against a uniform-noise image "registered" (a 9 degree affine) without a word;
    the registered pair's MI is now compared with that of the moving values shuffled."""
    from importlib.resources import files

    from priorreg import io as pio

    brainweb = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(brainweb / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    kw = dict(warn=False, max_iterations=5, levels=2)
    said = lambda r: [w for w in r.warnings if "share almost no information" in w]  # noqa: E731
    noise = f.with_array(np.random.default_rng(0).uniform(0, 255, f.shape).astype(np.float32))
    (w,) = said(priorreg.register(f, noise, **kw))
    assert "not to be trusted" in w
    assert not said(priorreg.register(f, m, **kw))


def test_an_image_without_a_frame_beside_one_with_another_direction_is_warned_about():
    """A new user's Image(t1.array, t1.spacing) beside the T2 from read_image registered to the wrong side of the
    anatomy without a word; an Image without a frame beside another one, or a frame beside a frame, is fine."""
    f, m, v, lab = syn.case((40, 48), syn.T2_MONO, max_disp=1.0)
    turned = np.array([[-1.0, 0.0], [0.0, -1.0]])
    kw = dict(levels=1, max_iterations=2, linear="none", warn=False)
    r = register(Image(f, (1.0, 1.0), (40.0, 48.0), turned), Image(m, (1.0, 1.0)), **kw)
    assert [w for w in r.warnings if "frame" in w] == [
        "register(): the moving Image was made without a direction or origin (ITK's default frame) and the fixed one "
        "has its own, with another direction: the two frames disagree, which the registration cannot undo; if the "
        "moving image came from a file, read it with priorreg.read_image or give Image(array, spacing, origin, "
        "direction) from its header"]
    assert Image(m, (1.0, 1.0)).with_array(f).framed is False  # the same grid keeps its (absence of a) frame
    for pair in ((Image(f, (1.0, 1.0)), Image(m, (1.0, 1.0))),
                 (Image(f, (1.0, 1.0), (40.0, 48.0), turned), Image(m, (1.0, 1.0), (40.0, 48.0), turned)),
                 (Image(f, (1.0, 1.0), (3.0, 4.0)), Image(m, (1.0, 1.0)))):  # a frame with the default direction
        assert not any("frame" in w for w in register(*pair, **kw).warnings)


def _stored_otherwise(img: Image, perm, flip_axes) -> Image:
    """The same world samples with the array axes permuted (new axis j = old axis perm[j]) and some reversed."""
    D, sp, n = np.asarray(img.direction), np.asarray(img.spacing), img.shape
    origin = np.asarray(img.origin, float).copy()
    for j in flip_axes:
        origin += D[:, perm[j]] * sp[perm[j]] * (n[perm[j]] - 1)
    direction = np.stack([(-1.0 if j in flip_axes else 1.0) * D[:, k] for j, k in enumerate(perm)], axis=1)
    return Image(np.flip(np.transpose(img.array, perm), flip_axes).copy(), tuple(sp[list(perm)]), tuple(origin), direction)


def test_the_same_images_stored_in_other_voxel_layouts_give_the_same_field():
    """A new user's moving NIfTI with permuted, flipped axes (the same world samples) ended 2.8 mm from the run on
    the original file, and a fixed image with qfac -1 up to 16 mm: the stages index arrays by voxel (pyramid,
    samples, the linear field kept as a start only on one grid). The deformable stage now runs on one layout
    (priorreg.layout); the linear stage, in world space, still samples the arrays as stored (within 0.03 mm here)."""
    f, m, v, lab = syn.case((24, 28, 20), syn.T2_MONO, max_disp=1.5)
    geo = dict(spacing=(1.5, 1.0, 1.2), origin=(3.0, -4.0, 5.0), direction=np.diag([1.0, -1.0, -1.0]))
    fixed, moving = Image(f, **geo), Image(np.roll(m, 1, axis=2), **geo)
    kw = dict(levels=2, max_iterations=15, warn=False, linear="none")
    base = register_with_presets(fixed, moving, **kw)
    other = register_with_presets(fixed, _stored_otherwise(moving, (2, 0, 1), (0, 2)), **kw)
    np.testing.assert_allclose(other.field, base.field, atol=1e-5)
    turned = register_with_presets(_stored_otherwise(fixed, (1, 2, 0), ()), moving, **kw)  # levels named on its axes
    assert [h.shape for h in turned.history] == [tuple(h.shape[k] for k in (1, 2, 0)) for h in base.history]
    flipped = register_with_presets(_stored_otherwise(fixed, (0, 1, 2), (0,)), moving, **kw)
    back = np.flip(flipped.field_world(), 0)  # the same world points as base's grid
    np.testing.assert_allclose(back, base.field_world(), atol=1e-5)
    np.testing.assert_allclose(np.flip(flipped.warped.array, 0), base.warped.array, atol=1e-5)


def test_warp_warns_when_the_moving_image_lies_mostly_outside_the_reference():
    """Labels wrapped in an Image without the file's direction came back all zero without a word; a label
    patch cropped from the moving image, inside the reference, is no cause for a warning."""
    import warnings

    ref = Image(np.zeros((40, 50)), (1.0, 1.0), (0.0, 0.0), np.array([[0.0, -1.0], [-1.0, 0.0]]))  # as ITK reads a NIfTI
    labels = np.zeros((40, 50), np.uint8)
    labels[10:30, 10:40] = 1
    zero = np.zeros((2, 40, 50))
    with pytest.warns(PriorRegWarning, match=r"lies mostly outside the reference grid through the field \(their boxes overlap by 0%"):
        assert warp(Image(labels), zero, reference=ref, interpolation="nearest").array.sum() == 0
    patch = ref.with_array(labels[5:20, 5:20].copy())
    patch.origin = tuple(ref.direction @ np.array([5.0, 5.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorRegWarning)
        assert warp(ref.with_array(labels), zero, reference=ref, interpolation="nearest").array.sum() == labels.sum()
        assert warp(patch, zero, reference=ref, interpolation="nearest").array.sum() == labels[5:20, 5:20].sum()


def test_warp_takes_a_field_of_the_other_byte_order():
    """A big-endian field (as some readers give) raised torch's ValueError; images of either order were taken."""
    rng = np.random.default_rng(0)
    m = rng.random((20, 24))
    field = rng.normal(0, 1.5, (2, 20, 24))
    np.testing.assert_array_equal(warp(m, field.astype(">f8")), warp(m, field))


def test_a_binary_moving_image_registers_without_a_traceback():
    """A 0/255 mask-like moving PNG ended in numpy's ValueError: its warped values inside the brain were 255
    up to rounding, and Otsu's histogram refused bins narrower than float spacing."""
    from importlib.resources import files

    from priorreg import intensity
    from priorreg import io as pio

    assert intensity.otsu_threshold(np.array([255 - 3e-14, 255.0, 255 + 3e-14])) == 255 - 3e-14
    brainweb = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(brainweb / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    binary = m.with_array((np.asarray(m.array) > 100) * 255.0)
    r = register_with_presets(f, binary, warn=False, levels=2, max_iterations=5)
    assert np.isfinite(np.asarray(r.field)).all()


def test_a_header_spacing_no_scanner_has_is_refused_or_warned_about():
    """Spacing 1e-30 mm beside 3 mm ended in scipy's 'Maximum allowed size exceeded', 1e-9 mm hung, and 0.01 mm
    along one axis of a 3 mm volume (the anatomy half a millimetre thick) ran to exit 0 without a word. Small
    voxels alone (electron microscopy: nanometres) are not refused."""
    f, m = syn.case((12, 40, 44), syn.T2_MONO, max_disp=1.0)[:2]
    for tiny in (1e-30, 1e-9, 1e-6):
        with pytest.raises(PriorRegError, match=r"fixed's voxels are .* times longer along one axis than another \(spacing "
                                                r"3 x 3 x .* mm\): a wrong header"):
            register_with_presets(Image(f, (tiny, 3.0, 3.0)), Image(m, (3.0, 3.0, 3.0)))
    r = register(Image(f, (0.01, 3.0, 3.0)), Image(m, (0.01, 3.0, 3.0)), levels=1, max_iterations=1, warn=False)
    assert ("register(): fixed's voxels are 300 times longer along one axis than another (spacing 3 x 3 x 0.01 mm, so "
            "the image spans 132 x 120 x 0.12 mm)") in " ".join(r.warnings)
    with warnings.catch_warnings(record=True) as caught:  # thick slices and tiny isotropic voxels are not warned about
        warnings.simplefilter("always")
        register(f, m, spacing=(6.0, 0.5, 0.5), levels=1, max_iterations=1)
        register(f, m, spacing=(4e-6, 4e-6, 4e-6), levels=1, max_iterations=1)
    assert not [w for w in caught if "longer along one axis" in str(w.message)]


def test_mind_patches_larger_than_the_image_are_refused():
    """mind_radius=5000 on a slice ran for minutes (a 10 181-voxel padded copy); mind_dilation=500 was taken."""
    f, m = syn.case((40, 44), syn.T2_MONO, max_disp=1.0)[:2]
    with pytest.raises(PriorRegError, match=r"mind_radius=5000 .* patches of 10001 voxels across .* the image is 40 voxels"):
        register_with_presets(f, m, mind_radius=5000)
    with pytest.raises(PriorRegError, match=r"mind_dilation=500 make MIND-SSC patches of 3 voxels across 500 voxel"):
        register_with_presets(f, m, mind_dilation=500)
    register(f, m, mind_radius=5000, levels=1, max_iterations=1)  # without the MIND term they mean nothing
