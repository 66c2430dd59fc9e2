import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from priorreg import histogram as hist


@pytest.mark.parametrize("bins,sigma", [(12, 1.5), (32, 1.0), (64, 2.0), (16, 0.0)])
def test_smoothing_matrix_is_symmetric_doubly_stochastic_and_matches_scipy(bins, sigma):
    S = hist.smoothing_matrix(bins, sigma).numpy()
    assert np.abs(S - S.T).max() < 1e-15
    assert np.abs(S.sum(0) - 1).max() < 1e-14 and np.abs(S.sum(1) - 1).max() < 1e-14
    rng = np.random.default_rng(0)
    H = rng.random((bins, bins))
    ref = ndimage.gaussian_filter(H, sigma, mode="reflect", truncate=4.0) if sigma > 0 else H
    assert np.abs(S @ H @ S.T - ref).max() < 1e-12


def test_joint_histogram_sums_to_one_and_marginals_match_1d_histograms():
    rng = np.random.default_rng(1)
    B = 16
    a = torch.as_tensor(rng.uniform(0, B - 1, 500))
    b = torch.as_tensor(rng.uniform(0, B - 1, 500))
    a[0], b[0] = B - 1, 0.0  # the end points are valid bin coordinates
    H = hist.joint_histogram(a, b, B)
    assert abs(float(H.sum()) - 1) < 1e-12
    # Marginal along b equals the 1D linear histogram of a.
    k0 = np.minimum(np.floor(a.numpy()), B - 2).astype(int)
    fa = a.numpy() - k0
    h1 = np.zeros(B)
    np.add.at(h1, k0, 1 - fa)
    np.add.at(h1, k0 + 1, fa)
    assert np.abs(H.sum(1).numpy() - h1 / 500).max() < 1e-12
    # Swapping the roles of the two images transposes the table.
    assert torch.allclose(hist.joint_histogram(b, a, B), H.T)
    S = hist.smoothing_matrix(B, 1.0)
    P = hist.smooth(H, S)
    assert abs(float(P.sum()) - 1) < 1e-12
    # Smoothed marginals are the smoothed 1D histograms (S h1).
    assert torch.allclose(P.sum(1), S @ H.sum(1))


def test_masked_histogram_uses_only_weighted_samples():
    B = 8
    a = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    b = torch.tensor([1.0, 3.0, 6.0], dtype=torch.float64)
    H = hist.joint_histogram(a, b, B, weights=torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    # Hand-derived: two samples on exact bin centres, each with mass 1/2.
    expected = np.zeros((B, B))
    expected[1, 1] = expected[5, 6] = 0.5
    assert np.allclose(H.numpy(), expected)


def test_binned_first_axis_gives_the_same_tables_and_derivatives():
    """A FirstAxis binned once (weighted later, or with its regions inside) gives the tables and the
    d2_bilinear read-outs of binning the coordinates at every call, bit for bit."""
    rng = np.random.default_rng(5)
    B, n, R = 12, 4000, 4
    a, b = (torch.as_tensor(rng.uniform(0, B - 1, n)) for _ in range(2))
    w = torch.as_tensor(rng.random(n))
    region = torch.as_tensor(rng.integers(0, R, n))
    assert torch.equal(hist.joint_counts(hist.first_axis(a, B), b, B, w), hist.joint_counts(a, b, B, w))
    fa = hist.first_axis(a, B, w, region)
    assert torch.equal(hist.joint_counts(fa, b, B, n_regions=R), hist.joint_counts(a, b, B, w, region, R))
    x = torch.as_tensor(rng.uniform(0.0, 1.0, n))
    S = hist.smoothing_matrix(B, 1.0)
    binned = hist.first_axis(hist.bin_coordinates(x, 0.0, 1.0, B)[0], B)
    ranges = ((0.0, 1.0), (0.0, B - 1.0))
    assert torch.equal(hist.parzen_joint_histogram(binned, b, ranges, S, w), hist.parzen_joint_histogram(x, b, ranges, S, w))
    C = torch.as_tensor(rng.random((R, B, B)))  # regional tables read at each sample's region; one table by all
    assert torch.equal(hist.d2_bilinear(C, fa, b), hist.d2_bilinear(C, a, b, region))
    assert torch.equal(hist.d2_bilinear(C[:1], fa, b), hist.d2_bilinear(C[0], a, b))


def test_kl_of_a_table_with_itself_is_zero_and_mi_of_independent_table_is_zero():
    rng = np.random.default_rng(2)
    P = torch.as_tensor(rng.random((10, 10)))
    P = P / P.sum()
    Q = hist.floor_prior(P, 0.0)
    assert abs(float(hist.kl_divergence(P, torch.log(Q + 1e-10), 1e-10))) < 1e-12
    outer = torch.outer(P.sum(1), P.sum(0))
    # The eps floor perturbs MI by O(B^2 eps); with eps = 1e-14 that is ~1e-12.
    assert abs(float(hist.mutual_information(outer, eps=1e-14))) < 1e-10


def test_floored_prior_still_sums_to_one():
    Q = torch.zeros(8, 8, dtype=torch.float64)
    Q[2, 3] = 1
    Qf = hist.floor_prior(Q, 1e-6)
    assert abs(float(Qf.sum()) - 1) < 1e-14 and float(Qf.min()) > 0


def test_d2_bilinear_is_the_derivative_of_the_bilinear_interpolant():
    rng = np.random.default_rng(3)
    C = torch.as_tensor(rng.standard_normal((9, 9)))
    a = torch.as_tensor(rng.uniform(0, 8, 50))
    b = torch.as_tensor(rng.uniform(0.01, 7.99, 50))

    def interp(bb):
        k0, fa = hist._corners(a, 9)
        l0, fb = hist._corners(bb, 9)
        Cf = C.reshape(-1)
        i = k0 * 9 + l0
        return (1 - fa) * ((1 - fb) * Cf[i] + fb * Cf[i + 1]) + fa * ((1 - fb) * Cf[i + 9] + fb * Cf[i + 10])

    h = 1e-7
    fd = (interp(b + h) - interp(b - h)) / (2 * h)
    assert torch.allclose(hist.d2_bilinear(C, a, b), fd, atol=1e-6)


# ----------------------------------------------------------------------------- value tests
# MI, KL and the Parzen table against references built another way (numpy loops over the
# table, scipy.stats.entropy, explicit triangle kernels and scipy's Gaussian filter), in the
# style of DIPY's Parzen histogram tests.
# A hand-made 3 x 4 joint table (rows: fixed intensity, columns: moving intensity).
TABLE = np.array([[0.10, 0.05, 0.00, 0.05],
                  [0.02, 0.20, 0.08, 0.00],
                  [0.00, 0.05, 0.15, 0.30]])


def _mi_loops(P):
    p1, p2 = P.sum(1), P.sum(0)
    mi = 0.0
    for k in range(P.shape[0]):
        for l in range(P.shape[1]):
            if P[k, l] > 0:
                mi += P[k, l] * np.log(P[k, l] / (p1[k] * p2[l]))
    return mi


def test_mutual_information_matches_loops_and_the_entropy_identity():
    P = torch.as_tensor(TABLE)
    mi = float(hist.mutual_information(P, 1e-300))  # zero cells: 0 ln 0 needs a floor (here negligible)
    assert mi == pytest.approx(_mi_loops(TABLE), abs=1e-14)
    # MI = H(X) + H(Y) - H(X, Y), each entropy by scipy.
    ref = stats.entropy(TABLE.sum(1)) + stats.entropy(TABLE.sum(0)) - stats.entropy(TABLE.ravel())
    assert mi == pytest.approx(ref, abs=1e-14)
    # Hand value for a 2 x 2 table with perfect dependence: MI = ln 2.
    diagonal = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64)
    assert float(hist.mutual_information(diagonal, 1e-300)) == pytest.approx(np.log(2), abs=1e-15)
    # The eps floor is P + eps with the marginals of the floored table.
    eps = 1e-3
    Pt = TABLE + eps
    assert float(hist.mutual_information(P, eps)) == pytest.approx(_mi_loops(Pt), abs=1e-14)


def test_kl_and_cross_entropy_match_scipy_and_loops():
    rng = np.random.default_rng(5)
    Q = rng.random(TABLE.shape) + 0.05
    Q = Q / Q.sum()
    logQ = torch.log(torch.as_tensor(Q))
    P = torch.as_tensor(TABLE)
    # scipy.stats.entropy(p, q) = sum p ln(p / q), zero cells of p contributing 0; the engine
    # needs a floored P (ln 0), so compare at a floor far below the test's tolerance.
    kl = float(hist.kl_divergence(P, logQ, 1e-300))
    assert kl == pytest.approx(stats.entropy(TABLE.ravel(), Q.ravel()), abs=1e-14)
    # A floored table: P~ = P + eps, not renormalised (docs/method.md §2.4); loops over the cells.
    eps = 1e-3
    Pt = TABLE + eps
    ref = sum(Pt[k, l] * (np.log(Pt[k, l]) - np.log(Q[k, l])) for k in range(3) for l in range(4))
    assert float(hist.kl_divergence(P, logQ, eps)) == pytest.approx(ref, abs=1e-14)
    ce = float(hist.cross_entropy(P, logQ, eps))
    assert ce == pytest.approx(-sum(Pt[k, l] * np.log(Q[k, l]) for k in range(3) for l in range(4)), abs=1e-14)
    # KL = CE - H(P~), H written out over the cells.
    assert float(hist.kl_divergence(P, logQ, eps)) == pytest.approx(ce + float((Pt * np.log(Pt)).sum()), abs=1e-14)
    assert abs(float(hist.kl_divergence(torch.as_tensor(Q), logQ))) < 1e-15


def test_stacked_tables_give_one_value_per_table():
    rng = np.random.default_rng(6)
    tables = rng.random((3, 5, 5)) + 1e-3
    tables /= tables.sum((1, 2), keepdims=True)
    logQ = torch.log(torch.as_tensor(tables[::-1].copy()))
    T = torch.as_tensor(tables)
    mi, kl, ce = hist.mutual_information(T), hist.kl_divergence(T, logQ), hist.cross_entropy(T, logQ)
    assert mi.shape == kl.shape == ce.shape == (3,)
    for r in range(3):
        assert float(mi[r]) == pytest.approx(_mi_loops(tables[r]), abs=1e-14)
        assert float(kl[r]) == pytest.approx(stats.entropy(tables[r].ravel(), tables[2 - r].ravel()), abs=1e-14)
        assert float(ce[r]) == pytest.approx(-(tables[r] * np.log(tables[2 - r])).sum(), abs=1e-14)


def _parzen_reference(x, y, ranges, bins, sigma, weights=None):
    """The Parzen table built another way: explicit triangle kernels max(0, 1 - |t - k|) per
    sample and bin (linear binning), an outer product per sample, scipy's Gaussian filter."""
    (lo1, hi1), (lo2, hi2) = ranges
    t1 = np.clip((x - lo1) * (bins - 1) / (hi1 - lo1), 0, bins - 1)
    t2 = np.clip((y - lo2) * (bins - 1) / (hi2 - lo2), 0, bins - 1)
    w = np.ones(len(x)) if weights is None else weights
    k = np.arange(bins)
    H = np.zeros((bins, bins))
    for a, b, wi in zip(t1, t2, w):
        H += wi * np.outer(np.maximum(0, 1 - np.abs(a - k)), np.maximum(0, 1 - np.abs(b - k)))
    H /= w.sum()
    return ndimage.gaussian_filter(H, sigma, mode="reflect", truncate=4.0) if sigma > 0 else H


@pytest.mark.parametrize("bins,sigma,masked", [(16, 1.0, False), (24, 2.0, True), (10, 0.0, True)])
def test_parzen_joint_histogram_matches_a_reference_built_with_kernels(bins, sigma, masked):
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.2, 1.2, 400)  # some samples outside the range: clipped to the end bins
    y = np.sin(3 * x) + 0.1 * rng.standard_normal(400)
    ranges = ((0.0, 1.0), (-1.0, 1.0))
    w = (rng.random(400) > 0.3).astype(float) if masked else None
    P = hist.parzen_joint_histogram(torch.as_tensor(x), torch.as_tensor(y), ranges, hist.smoothing_matrix(bins, sigma),
                                    None if w is None else torch.as_tensor(w))
    ref = _parzen_reference(x, y, ranges, bins, sigma, w)
    assert np.abs(P.numpy() - ref).max() < 1e-14
    assert abs(float(P.sum()) - 1) < 1e-13


def test_energy_calibration_and_report_see_the_same_table():
    # One joint histogram: the registration energy's table at u = 0, the calibration's KL and the
    # report's figure are the engine's Parzen table (reference built with kernels).
    from priorreg import report
    from priorreg.calibration import modality_order_check
    from priorreg.energy import HistogramSpec, JointHistogramEnergy

    rng = np.random.default_rng(8)
    f = ndimage.gaussian_filter(rng.random((24, 20)), 1.5)
    f = (f - f.min()) / np.ptp(f)
    m = np.cos(2.5 * f) + 0.05 * rng.standard_normal(f.shape)
    mask = np.zeros(f.shape)
    mask[3:20, 2:17] = 1
    spec = HistogramSpec(12, 1.0, ((0.0, 1.0), (-0.5, 1.2)))
    ref = _parzen_reference(f.ravel(), m.ravel(), spec.ranges, spec.bins, spec.parzen_sigma, mask.ravel())
    ft, mt = torch.as_tensor(f), torch.as_tensor(m)
    energy = JointHistogramEnergy(ft, mt, (1.0, 1.0), spec, [], torch.as_tensor(mask))
    P_energy = energy.table(mt)[0].numpy()
    P_report = report._joint_histogram(f, m, spec.ranges, spec.bins, spec.parzen_sigma, mask)
    assert np.abs(P_energy - ref).max() < 1e-14 and np.abs(P_report - ref).max() < 1e-14
    Q = rng.random((12, 12)) + 0.1
    Q /= Q.sum()
    kl_given, _ = modality_order_check(ft, mt, torch.as_tensor(Q), spec, torch.as_tensor(mask))
    assert kl_given == pytest.approx(float(((ref + spec.eps) * (np.log(ref + spec.eps) - np.log(Q))).sum()), abs=1e-12)


def test_energy_terms_values_match_loops():
    # The histogram terms' values through the engine's Tables against loops over the cells,
    # the conditional KL written as sum_m P(m) KL(P(. | m) || Q(. | m)).
    from priorreg.energy import NegMutualInformation, PriorConditionalKL, PriorCrossEntropy, PriorKL, Tables

    rng = np.random.default_rng(9)
    Q = rng.random(TABLE.shape) + 0.05
    Q /= Q.sum()
    Pf, P1, P2 = hist.entropy_terms(torch.as_tensor(TABLE), 1e-10)
    T = Tables(Pf, P1, P2, Pf[None], torch.ones(1, dtype=torch.float64))
    Pt = TABLE + 1e-10
    Qt = torch.as_tensor(Q)
    assert float(NegMutualInformation().value(T)) == pytest.approx(-_mi_loops(Pt), abs=1e-14)
    kl = sum(Pt[k, l] * np.log(Pt[k, l] / Q[k, l]) for k in range(3) for l in range(4))
    assert float(PriorKL(Qt).value(T)) == pytest.approx(kl, abs=1e-14)
    assert float(PriorCrossEntropy(Qt).value(T)) == pytest.approx(-(Pt * np.log(Q)).sum(), abs=1e-14)
    ckl = 0.0
    for mcol in range(4):
        pm, qm = Pt[:, mcol].sum(), Q[:, mcol].sum()
        ckl += pm * sum(Pt[k, mcol] / pm * np.log((Pt[k, mcol] / pm) / (Q[k, mcol] / qm)) for k in range(3))
    assert float(PriorConditionalKL(Qt).value(T)) == pytest.approx(ckl, abs=1e-14)


def test_regions_given_beside_a_binned_first_axis_are_refused():
    """A FirstAxis holds its regions: region= beside it would be ignored (every sample in table 0)."""
    a = torch.rand(50, dtype=torch.float64) * 7
    with pytest.raises(ValueError, match="holds its regions"):
        hist.joint_counts(hist.first_axis(a, 8), a, 8, region=torch.zeros(50, dtype=torch.long), n_regions=2)
