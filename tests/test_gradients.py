"""Analytic force vs central finite differences of the discrete energy (float64).

The energy is piecewise smooth (linear binning, n-linear interpolation): kinks
where a sample crosses a bin or voxel boundary. With h = 1e-6 mm a random probe
rarely straddles a kink, so entry-wise agreement is ~1e-6 relative; we demand a
relative error of the whole gradient vector below 1e-4 and a directional
derivative along a smooth direction within 1e-5, loose enough for the odd entry
that does straddle a kink (its error is O(1) but it is one of 40), tight enough
that a wrong sign, a missing beta, a missing mask factor or a missing smoothing
(errors of 10-100 %) fails.
"""
import numpy as np
import pytest
import torch
from scipy import ndimage

from priorreg import spatial
from priorreg.energy import (
    HistogramSpec,
    JointHistogramEnergy,
    NegMutualInformation,
    PriorConditionalKL,
    PriorCrossEntropy,
    PriorKL,
    RegionalNegMutualInformation,
)
from priorreg.histogram import floor_prior
from priorreg.regularizer import Tikhonov


@pytest.fixture(autouse=True, scope="module")
def _float64_default():
    """float64 as torch's default dtype for this module's tests only (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    f1 = ndimage.gaussian_filter(rng.random(shape), 1.2)
    f1 = (f1 - f1.min()) / np.ptp(f1)
    f2 = np.sin(3.0 * f1) + 0.05 * rng.standard_normal(shape)  # non-monotone in f1, plus noise
    return torch.as_tensor(f1), torch.as_tensor(f2)


def _setup(
    shape, spacing, alpha, lam, masked, seed=0, bins=16, sigma=1.0, force="exact", bending=0.0, regions=None, points=None
):
    f1, f2 = _pair(shape, seed)
    g1, g2 = _pair(shape, seed + 100)  # independent pair for the prior
    ranges = ((-0.1, 1.1), (-1.3, 1.3))
    spec = HistogramSpec(bins, sigma, ranges)
    mask = None
    if masked:
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        mask = torch.as_tensor((sum((g / 0.8) ** 2 for g in grids) < 1).astype(float))
    prior_e = JointHistogramEnergy(g1, g2, spacing, spec, [], regions=regions)
    Q = floor_prior(prior_e.table(g2)[0 if regions is None else 1], 1e-6)
    data = JointHistogramEnergy(
        f1, f2, spacing, spec, [(alpha, NegMutualInformation()), (1 - alpha, PriorKL(Q))], mask, force, regions, points
    )
    reg = Tikhonov(lam, spacing, bending)
    rng = np.random.default_rng(seed + 1)
    d = len(shape)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) for _ in range(d)])
    # |u| <= 2.9 mm, smooth; not 3.0, which would put the extreme voxel exactly on a grid
    # node, a kink of the n-linear interpolant where the one-sided derivatives differ.
    u = torch.as_tensor(2.9 * u / np.abs(u).max())
    return data, reg, u


def _energy(data, reg, u):
    _, total, _ = data.evaluate(u, with_force=False)
    return total + reg.total(reg.values(u))


def _check(data, reg, u, seed=0):
    n = u[0].numel()
    _, _, F = data.evaluate(u, with_force=True)
    grad = (F + reg.force(u)) / n  # force convention: N * dJ/du
    rng = np.random.default_rng(seed + 7)
    h = 1e-6
    idx = [tuple(int(rng.integers(0, s)) for s in u.shape) for _ in range(40)]
    fd, an = [], []
    for i in idx:
        e = torch.zeros_like(u)
        e[i] = h
        fd.append((_energy(data, reg, u + e) - _energy(data, reg, u - e)) / (2 * h))
        an.append(float(grad[i]))
    fd, an = np.array(fd), np.array(an)
    rel = np.linalg.norm(an - fd) / np.linalg.norm(fd)
    assert rel < 1e-4, f"gradient rel. error {rel:.2e}"
    # Directional derivative along a smooth random direction.
    dirn = torch.as_tensor(np.stack([ndimage.gaussian_filter(rng.standard_normal(u.shape[1:]), 2.0) for _ in range(u.shape[0])]))
    dirn = dirn / dirn.abs().max()
    fd_dir = (_energy(data, reg, u + h * dirn) - _energy(data, reg, u - h * dirn)) / (2 * h)
    an_dir = float((grad * dirn).sum())
    assert abs(an_dir - fd_dir) <= 1e-5 * abs(fd_dir), (an_dir, fd_dir)
    return rel


@pytest.mark.parametrize(
    "alpha,lam,masked",
    [(1.0, 0.0, False), (0.0, 0.0, False), (0.4, 0.0, False), (0.4, 2.0, False), (0.4, 2.0, True), (0.0, 1.0, True)],
    ids=["negMI", "KL", "blend", "blend+R", "blend+R+mask", "KL+R+mask"],
)
def test_exact_gradient_2d(alpha, lam, masked):
    data, reg, u = _setup((24, 20), (1.0, 1.3), alpha, lam, masked)
    _check(data, reg, u)


@pytest.mark.parametrize("alpha,masked", [(1.0, False), (0.0, False), (0.4, True)], ids=["negMI", "KL", "blend+mask"])
def test_exact_gradient_3d(alpha, masked):
    data, reg, u = _setup((10, 9, 8), (1.0, 1.2, 2.0), alpha, 2.0, masked, bins=12)
    _check(data, reg, u)


def test_gradient_with_more_bins_and_wider_parzen_window():
    data, reg, u = _setup((24, 20), (1.0, 1.0), 0.4, 2.0, False, bins=32, sigma=2.0)
    _check(data, reg, u)


def test_regularizer_alone():
    data, reg, u = _setup((16, 14), (1.0, 2.0), 1.0, 1.0, False)
    data.terms = []  # similarity weight zero: the energy is lambda * R only
    _check(data, reg, u)


@pytest.mark.parametrize("shape,spacing", [((16, 14), (1.0, 2.0)), ((8, 7, 6), (1.0, 1.5, 0.7))])
def test_bending_regularizer_alone(shape, spacing):
    data, reg, u = _setup(shape, spacing, 1.0, 0.5, False, bending=3.0)
    data.terms = []  # energy = lambda R + bending B only
    assert reg.values(u)["B"] > 0
    _check(data, reg, u)


def test_blend_with_membrane_and_bending_2d():
    data, reg, u = _setup((24, 20), (1.0, 1.3), 0.4, 0.3, True, bending=10.0)
    _check(data, reg, u)


@pytest.mark.parametrize("shape,spacing", [((24, 20), (1.0, 1.3)), ((10, 9, 8), (1.0, 1.2, 2.0))])
def test_cross_entropy_prior_gradient(shape, spacing):
    data, reg, u = _setup(shape, spacing, 0.4, 1.0, True, bins=12)
    w, kl = data.terms[1]
    data.terms[1] = data.all_terms[1] = (w, PriorCrossEntropy(torch.exp(kl.logQ)))
    values, _, _ = data.evaluate(u, with_force=False)
    assert values["CE"] > 0
    _check(data, reg, u)


@pytest.mark.parametrize(
    "shape,spacing,regions",
    [((24, 20), (1.0, 1.3), None), ((10, 9, 8), (1.0, 1.2, 2.0), None), ((24, 20), (1.0, 1.3), (2, 3))],
    ids=["2d", "3d", "2d-regional"],
)
def test_conditional_kl_prior_gradient(shape, spacing, regions):
    data, reg, u = _setup(shape, spacing, 0.4, 1.0, True, bins=12, regions=regions)
    w, kl = data.terms[1]
    data.terms[1] = data.all_terms[1] = (w, PriorConditionalKL(torch.exp(kl.logQ)))
    values, _, _ = data.evaluate(u, with_force=False)
    assert values["cKL"] > 0
    _check(data, reg, u)


def test_every_prior_term_choice_has_a_term():
    from priorreg.energy import PRIOR_TERMS
    from priorreg.options import PRIOR_TERM_CHOICES

    assert set(PRIOR_TERM_CHOICES) == set(PRIOR_TERMS)


def test_conditional_kl_is_kl_less_its_moving_marginal_part():
    # KL(P || Q) = KL(P_m || Q_m) + sum_m P(m) KL(P(f|m) || Q(f|m)): cKL is the second part, so a
    # prior with the same conditionals q(f|m) and other proportions of moving intensities gives the
    # same cKL (value and table gradient), while KL changes.
    data, _, u = _setup((24, 20), (1.0, 1.3), 0.4, 0.0, True, bins=12)
    _, kl = data.terms[1]
    data.value(u)
    T = data._state[-1]
    Q = torch.exp(kl.logQ[0])
    Qm = Q.sum(0)
    Pm = T.Pt.sum(0)
    marginal = float((Pm * (torch.log(Pm) - torch.log(Qm))).sum())
    ckl = PriorConditionalKL(Q)
    assert marginal > 1e-3
    assert abs(float(ckl.value(T)) - (float(kl.value(T)) - marginal)) < 1e-12
    other = torch.linspace(0.2, 1.8, Q.shape[1], dtype=Q.dtype)
    Q2 = Q / Qm[None, :] * (other / other.sum())[None, :]
    ckl2 = PriorConditionalKL(Q2)
    assert abs(float(ckl2.value(T)) - float(ckl.value(T))) < 1e-12
    assert torch.allclose(ckl2.phi(T), ckl.phi(T), atol=1e-12)
    assert abs(float(PriorKL(Q2).value(T)) - float(kl.value(T))) > 0.05


@pytest.mark.parametrize(
    "shape,spacing,regions,term",
    [((24, 20), (1.0, 1.3), (2, 3), "kl"), ((24, 20), (1.0, 1.3), (3, 2), "ce"), ((10, 9, 8), (1.0, 1.2, 2.0), (2, 1, 2), "kl")],
    ids=["2d-kl", "2d-ce", "3d-kl"],
)
def test_regional_prior_gradient(shape, spacing, regions, term):
    # One prior table per block of the field of view; MI stays global. The mask leaves
    # the corner blocks partly empty, so the per-region normalisation is exercised.
    data, reg, u = _setup(shape, spacing, 0.4, 1.0, True, bins=12, regions=regions)
    w, kl = data.terms[1]
    assert kl.n_regions == int(np.prod(regions)) and data.region is not None
    if term == "ce":
        data.terms[1] = data.all_terms[1] = (w, PriorCrossEntropy(torch.exp(kl.logQ)))
    values, _, _ = data.evaluate(u, with_force=False)
    assert values["KL" if term == "kl" else "CE"] > 0
    _check(data, reg, u)


def test_regional_prior_with_zero_weight_leaves_a_global_energy():
    # alpha = 1 at a level (alpha="auto" can choose it): the regional prior's weight is 0 and
    # only global MI remains on an energy laid out in blocks; its force reads the one table.
    data, reg, u = _setup((24, 20), (1.0, 1.3), 1.0, 1.0, True, bins=12, regions=(2, 3))
    assert data.region is not None and [t.name for _, t in data.terms] == ["-MI"]
    glob, _, _ = _setup((24, 20), (1.0, 1.3), 1.0, 1.0, True, bins=12)
    assert torch.allclose(data.evaluate(u, True)[2], glob.evaluate(u, True)[2])
    _check(data, reg, u)


def test_regional_prior_with_one_region_is_the_global_prior():
    a, _, u = _setup((24, 20), (1.0, 1.3), 0.4, 1.0, True)
    b, _, _ = _setup((24, 20), (1.0, 1.3), 0.4, 1.0, True, regions=(1, 1))
    (va, ta, fa), (vb, tb, fb) = a.evaluate(u, True), b.evaluate(u, True)
    assert va == vb and ta == tb and torch.equal(fa, fb)


@pytest.mark.parametrize(
    "shape,spacing,regions,masked",
    [((24, 20), (1.0, 1.3), (2, 3), True), ((24, 20), (1.0, 1.3), (1, 1), False), ((10, 9, 8), (1.0, 1.2, 2.0), (2, 1, 2), True)],
    ids=["2d-mask", "2d-one-region", "3d-mask"],
)
def test_regional_mi_gradient(shape, spacing, regions, masked):
    # Local similarity: -MI block by block, blended with the global -MI and a regional prior.
    data, reg, u = _setup(shape, spacing, 0.4, 1.0, masked, bins=12, regions=regions)
    data.terms.append((0.5, RegionalNegMutualInformation()))
    data.all_terms.append(data.terms[-1])
    values, _, _ = data.evaluate(u, with_force=False)
    assert values["-rMI"] < 0
    if regions == (1, 1):
        assert abs(values["-rMI"] - values["-MI"]) < 1e-12  # one block = the global MI
    _check(data, reg, u)


@pytest.mark.parametrize(
    "shape,spacing,regions", [((24, 20), (1.0, 1.3), None), ((10, 9, 8), (1.0, 1.2, 2.0), (2, 1, 2))], ids=["2d", "3d-regional"]
)
def test_gradient_on_a_random_subset_of_samples(shape, spacing, regions):
    # max_samples: the histogram sees a fixed random third of the voxels; the force is zero
    # elsewhere and carries the N_grid / n_samples scale of the per-voxel convention.
    n = int(np.prod(shape))
    points = spatial.sample_points(shape, n // 3, seed=4)
    assert points.numel() == n // 3 and torch.equal(points, torch.unique(points))
    data, reg, u = _setup(shape, spacing, 0.4, 1.0, True, bins=12, regions=regions, points=points)
    data.terms.append((0.5, RegionalNegMutualInformation()))
    data.all_terms.append(data.terms[-1])
    _, _, F = data.evaluate(u, True)
    off = torch.ones(n, dtype=torch.bool)
    off[points] = False
    assert torch.all(F.reshape(len(shape), -1)[:, off] == 0) and F.abs().max() > 0
    _check(data, reg, u)
    assert spatial.sample_points(shape, n) is None and spatial.sample_points(shape, 0) is None
    # min_fraction: the subset never falls below that share of the grid.
    assert spatial.sample_points(shape, 10, min_fraction=0.5).numel() == round(0.5 * n)
    assert spatial.sample_points(shape, n // 3, min_fraction=0.1).numel() == n // 3


def test_practical_force_is_a_descent_direction_close_to_the_exact_gradient():
    data, reg, u = _setup((48, 40), (1.0, 1.0), 0.4, 0.0, False, force="exact")
    _, _, F_exact = data.evaluate(u, True)
    data.force_mode = "practical"
    _, _, F_prac = data.evaluate(u, True)
    cos = float((F_exact * F_prac).sum() / (F_exact.norm() * F_prac.norm()))
    # docs/method.md §9.1 measured cosines of 0.69-0.99 between the two; both must point downhill.
    assert cos > 0.6, cos


def test_alpha_one_energy_is_minus_mi_exactly():
    data, reg, u = _setup((24, 20), (1.0, 1.0), 1.0, 0.0, False)
    values, total, _ = data.evaluate(u, with_force=False)
    assert total == values["-MI"]
    assert values["KL"] > 0  # KL is still reported, with weight zero
