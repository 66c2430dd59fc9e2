"""MIND-SSC descriptor and its SSD data term."""
import functools
import numpy as np
import pytest
import torch
from scipy import ndimage

import synthetic as syn
from conftest import assert_same_solution, cuda
from priorreg import PriorRegError, RegistrationOptions, fit_prior, register as register_with_presets, spatial
from priorreg.mind import MindEnergy, mind_ssc, principal_channels, ssc_pairs

# These tests check the engine's mechanics on its field defaults (RegistrationOptions()); what
# a user gets with no flags (the "default" preset) is tested in test_presets.py.
register = functools.partial(register_with_presets, options=RegistrationOptions())


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def test_ssc_pairs_join_neighbours_on_different_axes():
    for d, n in ((2, 4), (3, 12)):
        pairs = ssc_pairs(d, dilation=2)
        assert len(pairs) == n and len(set(pairs)) == n
        for a, b in pairs:
            axis_a = [k for k, v in enumerate(a) if v]
            axis_b = [k for k, v in enumerate(b) if v]
            assert len(axis_a) == len(axis_b) == 1 and axis_a != axis_b
            assert sum(map(abs, a)) == sum(map(abs, b)) == 2


@pytest.mark.parametrize("shape, radius, dilation", [((40, 44), 1, 1), ((20, 22, 18), 1, 2), ((16, 12, 14), 2, 1)])
def test_descriptor_is_its_formula(shape, radius, dilation):
    """mind_ssc (channels computed one at a time, then in place) against its docstring's formula in numpy."""
    img = np.random.default_rng(4).random(shape)
    pad = np.pad(img, dilation, mode="edge")
    moved = lambda o: pad[tuple(slice(dilation + k, dilation + k + n) for k, n in zip(o, shape))]
    D = np.stack([ndimage.uniform_filter((moved(a) - moved(b)) ** 2, 2 * radius + 1, mode="nearest")
                  for a, b in ssc_pairs(len(shape), dilation)])
    D -= D.min(0)
    V = D.mean(0)
    V = np.clip(V, V.mean() * 1e-3, V.mean() * 1e3)
    np.testing.assert_allclose(mind_ssc(_t(img), radius, dilation).numpy(), np.exp(-D / V), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(40, 44), (20, 22, 18)])
def test_descriptor_ignores_gain_offset_and_inversion(shape):
    lab = syn.anatomy(shape)
    img = _t(syn.contrast(lab, syn.T1, noise=0.02))
    m = mind_ssc(img)
    assert m.shape == (len(ssc_pairs(len(shape))), *shape)
    assert float(m.min()) > 0 and float(m.max()) <= 1.0
    for other in (3.0 * img + 7.0, 1.0 - 0.5 * img):
        assert torch.allclose(mind_ssc(other), m, atol=1e-9)


def test_descriptors_of_two_contrasts_agree_better_than_a_copy_shifted_by_one_voxel():
    lab = syn.anatomy((64, 72))
    # Radius-1 patches see noise: on near noise-free images (the descriptor's best case) the
    # two contrasts differ by half of what a one-voxel shift does (measured 0.023 vs 0.047).
    t1 = _t(syn.contrast(lab, syn.T1, noise=0.001, seed=1))
    pd = _t(syn.contrast(lab, syn.T2_MONO, noise=0.001, seed=2))  # inverted contrast
    shifted = torch.roll(t1, 1, dims=0)
    m1 = mind_ssc(t1)
    other_modality = float(((mind_ssc(pd) - m1) ** 2).mean())
    same_modality_shifted = float(((mind_ssc(shifted) - m1) ** 2).mean())
    assert other_modality < 0.7 * same_modality_shifted, (other_modality, same_modality_shifted)


def test_principal_channels_keep_distances():
    rng = np.random.default_rng(0)
    a, b = _t(rng.random((12, 9, 8, 7))), _t(rng.random((12, 9, 8, 7)))
    a2, b2 = principal_channels(a, b, 12)  # a rotation: distances unchanged
    assert torch.allclose(((a2 - b2) ** 2).sum(0), ((a - b) ** 2).sum(0), atol=1e-9)
    a3, b3 = principal_channels(a, b, 3)
    assert a3.shape == (3, 9, 8, 7)
    assert float(((a3 - b3) ** 2).sum()) <= float(((a - b) ** 2).sum()) + 1e-9


def _smooth_field(shape, amplitude, seed):
    rng = np.random.default_rng(seed)
    u = _t(np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) for _ in shape]))
    return amplitude * u / float(u.abs().max())


def _anatomy_pair(shape):
    lab = syn.anatomy(shape)
    return _t(syn.contrast(lab, syn.T1)), _t(syn.contrast(lab, syn.PD_NONMONO, seed=3))


@pytest.mark.parametrize("shape,spacing,points", [((36, 40), (1.0, 1.3), False), ((16, 18, 14), (1.2, 1.0, 1.5), True)])
def test_exact_force_is_the_derivative_of_the_value(shape, spacing, points):
    # Float64, |u| <= 1.7 mm off the grid nodes: the n-linear interpolant is smooth there.
    f, m = _anatomy_pair(shape)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = _t(sum(g**2 for g in grids) < 0.8)
    n = int(np.prod(shape))
    pts = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // 2]).values if points else None
    e = MindEnergy(f, m, spacing, 7.0, mask=mask, points=pts, force="exact")
    u = _smooth_field(shape, 1.7, 1)
    dirn = _smooth_field(shape, 1.0, 2)
    h = 1e-6
    fd = (e.value(u + h * dirn)[1] - e.value(u - h * dirn)[1]) / (2 * h)
    force = e.force(u)
    an = float((force * dirn).sum()) / n  # force convention: N_grid * dE/du
    assert abs(an - fd) < 1e-5 * abs(fd), (an, fd)
    values, total, _ = e.evaluate(u)
    assert set(values) == {"MIND"} and total == pytest.approx(7.0 * values["MIND"])
    if points:  # the force lives on the sampled voxels only
        outside = torch.ones(n, dtype=torch.bool)
        outside[pts] = False
        assert float(force.reshape(len(shape), -1)[:, outside].abs().max()) == 0.0


@pytest.mark.parametrize("shape,spacing", [((64, 72), (1.0, 1.3)), ((24, 26, 22), (1.2, 1.0, 1.5))])
def test_practical_force_points_along_the_exact_one(shape, spacing):
    # The descriptor is rough at the voxel scale, so its central-difference gradient and the
    # interpolant's one-sided derivative differ voxel by voxel (measured cosine 0.64-0.70);
    # a wrong sign gives a negative cosine, a missing spacing or channel factor a wrong scale.
    f, m = _anatomy_pair(shape)
    u = _smooth_field(shape, 2.3, 1)
    fp = MindEnergy(f, m, spacing, 7.0).force(u)
    fe = MindEnergy(f, m, spacing, 7.0, force="exact").force(u)
    cos = float((fp * fe).sum() / (fp.norm() * fe.norm()))
    assert cos > 0.5, cos
    assert 0.5 < float(fp.norm() / fe.norm()) < 2.0


def _epe(field, v, mask):
    return float(np.sqrt(((field - v) ** 2).sum(0))[mask].mean())


def test_mind_term_improves_recovery_of_a_known_warp():
    # A bias field across the moving image blurs the global joint histogram; the local
    # descriptor does not care. Measured EPE: MI 0.77, MI + MIND 0.40.
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=4.0, seed=0)
    X, Y = np.meshgrid(np.linspace(-1, 1, m.shape[0]), np.linspace(-1, 1, m.shape[1]), indexing="ij")
    m = m * np.exp(0.6 * (X + Y))
    mask = syn.deform((lab > 0).astype(float), v) > 0.5
    kw = dict(levels=3, bins=32, parzen_sigma=1.0, regularization=20.0)
    plain = register(f, m, **kw)
    mind = register(f, m, mind_weight=10.0, **kw)
    e_plain, e_mind = _epe(plain.field, v, mask), _epe(mind.field, v, mask)
    assert e_mind < 0.5 and e_mind < e_plain - 0.25, (e_plain, e_mind)
    assert mind.jacobian_stats["percent_nonpositive"] == 0
    assert "MIND" in mind.history[-1].terms[-1] and "MIND" not in plain.history[-1].terms[-1]


@pytest.mark.parametrize("fraction", [1.0, 1 / 3])
def test_mind_in_3d_with_principal_channels_and_samples(fraction):
    # Measured EPE (voxels): 0.96 before, MI 0.45, MI + MIND on 3 principal channels 0.41
    # (0.41 too with MIND on a third of the histogram samples).
    shape, spacing = (40, 44, 36), (1.0, 1.0, 1.5)
    f, m, v, lab = syn.case(shape, syn.T2_MONO, max_disp=3.0)
    mask = syn.deform((lab > 0).astype(float), v) > 0.5
    h = np.asarray(spacing).reshape(3, 1, 1, 1)
    r = register(f, m, spacing=spacing, levels=2, bins=32, parzen_sigma=1.0, regularization=20.0,
                 mind_weight=10.0, mind_channels=3, max_samples=20000, mind_sample_fraction=fraction)
    before, after = _epe(0 * v, v, mask), _epe(r.field / h, v, mask)
    assert before > 0.9 and after < 0.5 * before, (before, after)
    assert r.jacobian_stats["percent_nonpositive"] == 0


def test_alpha_weights_the_mind_term_and_zero_keeps_the_prior_alone():
    f, m, v, lab = syn.case((48, 56), syn.T2_MONO, max_disp=2.0, seed=3)
    prior = fit_prior(f, syn.deform(m, v), bins=32, parzen_sigma=1.0, levels=2)
    r0 = register(f, m, prior=prior, alpha=0.0, levels=2, bins=32, parzen_sigma=1.0, mind_weight=10.0, max_iterations=5)
    assert "MIND" not in r0.history[-1].terms[-1]
    r4 = register(f, m, prior=prior, alpha=0.4, levels=2, bins=32, parzen_sigma=1.0, mind_weight=10.0, max_iterations=5)
    assert {"MIND", "KL", "-MI"} <= set(r4.history[-1].terms[-1])


@pytest.mark.parametrize(
    "bad", [dict(mind_weight=-1.0), dict(mind_weight=float("nan")), dict(mind_radius=-1), dict(mind_dilation=0),
            dict(mind_channels=2.5), dict(mind_channels=True), dict(mind_sample_fraction=0.0),
            dict(mind_sample_fraction=1.5)]
)
def test_bad_mind_options_are_refused(bad):
    with pytest.raises(PriorRegError, match="mind_"):
        RegistrationOptions(**bad)


def test_thin_points_draws_a_fixed_sorted_fraction_of_the_samples():
    pts = spatial.sample_points((30, 40, 20), 6000, seed=0)
    sub = spatial.thin_points(pts, (30, 40, 20), 1 / 3, seed=5)
    assert sub.numel() == 2000 and bool((sub[1:] > sub[:-1]).all())
    assert bool(torch.isin(sub, pts).all())
    assert torch.equal(sub, spatial.thin_points(pts, (30, 40, 20), 1 / 3, seed=5))
    every = spatial.thin_points(None, (30, 40), 0.25, seed=1)  # None: every voxel of the grid
    assert every.numel() == 300 and int(every.max()) < 1200
    assert spatial.thin_points(pts, (30, 40, 20), 1.0) is pts


def test_thinned_mind_samples_fall_back_when_they_miss_a_tiny_mask():
    f, m, v, lab = syn.case((48, 56), syn.T2_MONO, max_disp=2.0, seed=3)
    mask = np.zeros(f.shape, bool)
    mask[20, 30] = True  # one voxel: a 1 % draw misses it
    r = register(f, m, mask=mask, levels=1, bins=32, parzen_sigma=1.0, mind_weight=10.0, mind_sample_fraction=0.01,
                 max_iterations=3)
    assert np.isfinite(r.field).all() and "MIND" in r.history[-1].terms[-1]


@cuda
def test_mind_term_cpu_and_cuda_agree():
    f, m, v, lab = syn.case((64, 72), syn.PD_NONMONO, max_disp=3.0)
    kw = dict(levels=2, bins=32, parzen_sigma=1.0, max_iterations=20, dtype="float64", mind_weight=10.0, local_weight=1.0)
    rc = register(f, m, device="cpu", **kw)
    rg = register(f, m, device="cuda", **kw)
    assert_same_solution(rc, rg, v, syn.deform((lab > 0).astype(float), v) > 0.5)  # not bit for bit: see there
