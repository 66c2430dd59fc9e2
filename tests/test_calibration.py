"""Fitting the test pair's intensities to a learned prior (priorreg.calibration)."""
import functools
import numpy as np
import pytest
import torch

import synthetic as syn
from priorreg import PriorRegError, PriorRegWarning, RegistrationOptions, fit_prior, register as register_with_presets
from priorreg import histogram as hist
from priorreg.calibration import fit_intensity_maps
from priorreg.energy import HistogramSpec

# These tests check the engine's mechanics on its field defaults (RegistrationOptions()); what
# a user gets with no flags (the "default" preset) is tested in test_presets.py.
register = functools.partial(register_with_presets, options=RegistrationOptions())


def _table(f, m, spec):
    S = hist.smoothing_matrix(spec.bins, spec.parzen_sigma)
    return hist.floor_prior(hist.parzen_joint_histogram(f.reshape(-1), m.reshape(-1), spec.ranges, S), 1e-6)


def _aligned_pair(seed=0):
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=0.0, seed=seed)
    f = torch.as_tensor((f - f.min()) / np.ptp(f), dtype=torch.float64)
    m = torch.as_tensor((m - m.min()) / np.ptp(m), dtype=torch.float64)
    return f, m


def test_fit_undoes_a_known_gain_and_offset_on_each_axis():
    f, m = _aligned_pair()
    spec = HistogramSpec(bins=32, parzen_sigma=1.0, ranges=((-0.3, 1.3), (-0.3, 1.3)))
    Q = _table(f, m, spec)
    (af, bf), (am, bm), before, after = fit_intensity_maps(0.85 * f + 0.05, 1.2 * m - 0.1, Q, spec)
    # The fitted maps compose with the applied ones to about the identity.
    assert af * 0.85 == pytest.approx(1.0, abs=0.03) and af * 0.05 + bf == pytest.approx(0.0, abs=0.03)
    assert am * 1.2 == pytest.approx(1.0, abs=0.03) and bm - am * 0.1 == pytest.approx(0.0, abs=0.03)
    assert before > 0.3 and after < 0.1 * before, (before, after)


def test_a_small_gain_keeps_the_identity():
    f, m = _aligned_pair()
    spec = HistogramSpec(bins=32, parzen_sigma=1.0, ranges=((-0.3, 1.3), (-0.3, 1.3)))
    Q = _table(f, m, spec)
    maps = fit_intensity_maps(f, 1.01 * m, Q, spec)
    assert maps[0] == (1.0, 0.0) and maps[1] == (1.0, 0.0) and maps[2] == maps[3] < 0.1


def test_prior_only_registration_survives_a_miscalibrated_prior():
    # No intensity normalisation: the test moving image is 1.3x brighter than the
    # training one, so the prior's mass sits beside the test pair's joint histogram.
    # Measured EPE (voxels): 1.23 before, prior alone 1.91 (worse than not moving), with the
    # affine fit 0.45 (0.44 when the test image has the training intensities; fitted gain 0.771).
    f, m, v, lab = syn.case((96, 112), syn.PD_NONMONO, max_disp=3.0, seed=1)
    f2, m2, _, _ = syn.case((96, 112), syn.PD_NONMONO, max_disp=0.0, seed=2)
    prior = fit_prior(f2, m2, bins=32, parzen_sigma=1.0, levels=3, normalization="none")
    mask = syn.deform((lab > 0).astype(float), v) > 0.5
    kw = dict(prior=prior, alpha=0.0, levels=3, bins=32, parzen_sigma=1.0, regularization=20.0)
    with pytest.warns(PriorRegWarning, match="far from it"):  # the prior's mass beside the pair's: named
        plain = register(f, 1.3 * m, **kw)
    fitted = register(f, 1.3 * m, prior_intensity_fit="affine", **kw)
    epe = lambda r: float(np.sqrt(((r.field - v) ** 2).sum(0))[mask].mean())
    before = float(np.sqrt((v**2).sum(0))[mask].mean())
    assert epe(fitted) < 0.6 * before and epe(fitted) < epe(plain) - 0.3, (before, epe(plain), epe(fitted))
    maps = fitted.prior["intensity_maps"]
    assert [d["level"] for d in maps] == [2, 1, 0]
    assert maps[-1]["moving"][0] == pytest.approx(1 / 1.3, abs=0.06)
    assert fitted.jacobian_stats["percent_nonpositive"] == 0


def test_alpha_one_fits_nothing_and_bad_values_are_refused():
    f, m, v, lab = syn.case((48, 56), syn.T2_MONO, max_disp=2.0, seed=3)
    prior = fit_prior(f, syn.deform(m, v), bins=32, parzen_sigma=1.0, levels=2)
    r = register(f, m, prior=prior, alpha=1.0, levels=2, bins=32, parzen_sigma=1.0, prior_intensity_fit="affine",
                 max_iterations=3)
    assert "intensity_maps" not in r.prior
    with pytest.raises(PriorRegError, match="prior_intensity_fit"):
        RegistrationOptions(prior_intensity_fit="linear")


def test_the_fit_reads_only_the_masked_voxels():
    # Inside the mask the moving image has gain 1.2, outside 0.7: fitted on the mask the maps
    # undo 1.2 as if the rest were not there; fitted on every voxel they land elsewhere.
    f, m = _aligned_pair()
    spec = HistogramSpec(bins=32, parzen_sigma=1.0, ranges=((-0.3, 1.3), (-0.3, 1.3)))
    mask = torch.zeros_like(f)
    mask[:, : f.shape[1] // 2] = 1
    Q = _table(f[mask > 0], m[mask > 0], spec)
    noisy = torch.where(mask > 0, 1.2 * m - 0.1, 0.7 * m + 0.2)
    (_, _), (am, bm), _, _ = fit_intensity_maps(f, noisy, Q, spec, weights=mask)
    assert am * 1.2 == pytest.approx(1.0, abs=0.03) and bm - am * 0.1 == pytest.approx(0.0, abs=0.03)
    (_, _), (am_all, _), _, _ = fit_intensity_maps(f, noisy, Q, spec)
    assert abs(am_all * 1.2 - 1.0) > 0.05, am_all
    with pytest.raises(ValueError, match="mask is empty"):
        fit_intensity_maps(f, noisy, Q, spec, weights=torch.zeros_like(f))


def test_the_order_warning_catches_a_swapped_3d_prior_and_spares_the_closest_right_ones():
    """KLs measured with register()'s own check (benchmarks/results/modality-order/rows.jsonl): a new user's 3D
    BraTS prior trained the wrong way round (1.558 given, 0.826 swapped) went unwarned under the 2D thresholds;
    the right-order priors nearest the boundary (BraTS as the benchmark crops it, MNI sagittal PD) stay silent."""
    from priorreg.calibration import swapped_prior_message

    assert swapped_prior_message("register()", 1.558, 0.826) is not None
    for given, swapped in ((1.613, 1.090), (1.675, 1.136), (2.061, 1.544), (1.884, 1.420)):
        assert swapped_prior_message("register()", given, swapped) is None, (given, swapped)
