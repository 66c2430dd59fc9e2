import numpy as np
import pytest
import torch
from scipy import ndimage

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
