"""alpha="auto" (issue 20): the prior's weight chosen per level from the evidence (priorreg.prior_weight)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import synthetic as syn
from conftest import assert_same_solution, cuda

from priorreg import Prior, PriorRegError, fit_prior, prior_weight, register
from priorreg.options import RegistrationOptions

SHAPE = (48, 48)
FAST = dict(levels=2, max_iterations=15, bins=32, parzen_sigma=1.0, linear="none", local_weight=0.0, mind_weight=0.0,
            prior_intensity_fit="none")
# the test pair: T1 (deformed) <- T2, anatomy seed 0; training pairs: other anatomies (seeds 1-3)
T1, T2 = syn.T1, syn.T2_MONO


def _pair(values_fixed, values_moving, seed):
    lab = syn.anatomy(SHAPE, seed)
    return syn.contrast(lab, values_fixed, seed=seed + 20), syn.contrast(lab, values_moving, seed=seed + 30)


def _prior(values_fixed=T1, values_moving=T2, seeds=(1, 2, 3)):
    pairs = [_pair(values_fixed, values_moving, s) for s in seeds]
    return fit_prior([p[0] for p in pairs], [p[1] for p in pairs], bins=FAST["bins"], parzen_sigma=FAST["parzen_sigma"],
                     levels=FAST["levels"])


@pytest.fixture(scope="module")
def test_pair():
    f, m, v, _ = syn.case(SHAPE, T2, max_disp=2.0, seed=0)
    return f, m


def _register_auto(f, m, prior, **kw):
    return register(f, m, prior=prior, alpha="auto", warn=False, **{**FAST, **kw})


def _alphas(res):
    return [r["alpha"] for r in res.prior_weights]


# --------------------------------------------------------------------------- options and prior file


def test_options_take_auto():
    assert RegistrationOptions(alpha="auto").alpha == "auto"
    assert RegistrationOptions(alpha=" Auto").alpha == "auto"
    assert RegistrationOptions(alpha=np.float32(0.25)).alpha == np.float32(0.25)
    for bad in ("half", 1.5, -0.1, None, float("nan")):
        with pytest.raises(PriorRegError, match=r"alpha must be a number in \[0, 1\] or 'auto'") as e:
            RegistrationOptions(alpha=bad)
        assert "\n" not in str(e.value)


def test_prior_stores_the_spread_of_its_training_pairs(tmp_path):
    p = _prior()
    assert p.pair_kl.shape == (FAST["levels"], 3) and np.all(np.isfinite(p.pair_kl)) and np.all(p.pair_kl > 0)
    p.save(tmp_path / "p.npz")
    q = Prior.load(tmp_path / "p.npz")
    np.testing.assert_allclose(q.pair_kl, p.pair_kl)
    one = fit_prior(*_pair(T1, T2, 1), bins=32, parzen_sigma=1.0, levels=2)
    assert one.pair_kl.shape == (2, 1) and np.all(np.isnan(one.pair_kl))
    f, m = _pair(T1, T2, 1)  # the same pair twice looked like two pairs that agree perfectly (spread ~0)
    with pytest.raises(PriorRegError, match="pair 1 repeats pair 0"):
        fit_prior([f, f], [m, m], bins=32, parzen_sigma=1.0, levels=2)


def test_old_prior_file_loads_and_auto_gives_it_no_weight(tmp_path, test_pair):
    """A file written before the spread was stored (no pair_kl array) loads; auto gives it no weight and says why."""
    p = _prior()
    path = tmp_path / "old.npz"
    np.savez_compressed(path, tables=p.tables, region_mass=p.region_mass, meta=np.array(json.dumps(p.metadata())))
    old = Prior.load(path)
    assert old.pair_kl is None and old.n_pairs == 3
    res = _register_auto(*test_pair, old)
    assert _alphas(res) == [1.0, 1.0]
    assert [w for w in res.warnings if "no weight at any level" in w and "train it again" in w]


# --------------------------------------------------------------------------- the rule on registrations


def test_right_prior_gets_weight(test_pair):
    """Training pairs of the same modality pair (other anatomies): alpha < 1 at some level."""
    res = _register_auto(*test_pair, _prior())
    assert len(res.prior_weights) == FAST["levels"]
    assert min(_alphas(res)) < 0.9, res.prior_weights
    for r in res.prior_weights:
        assert {"alpha", "kl", "spread", "prior_mi", "reason", "level"} <= set(r)
    assert res.as_dict()["prior_weights"] == res.prior_weights


@pytest.mark.parametrize("which", ["another modality pair", "swapped", "another anatomy"])
def test_wrong_prior_falls_back_to_the_similarity(test_pair, which):
    if which == "another modality pair":  # T1 / PD (non-monotone) for a T1 / T2 pair
        prior = _prior(T1, syn.PD_NONMONO)
    elif which == "swapped":  # trained with the moving modality first
        prior = _prior(T2, T1)
    else:  # a blurred, noisy "functional" image of two blobs, not this anatomy
        pairs = []
        for s in (1, 2, 3):
            lab = np.zeros(SHAPE, int)
            rng = np.random.default_rng(s)
            yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
            for k in (1, 2):
                c = rng.uniform(12, 36, 2)
                lab[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < rng.uniform(30, 80)] = k
            pairs.append((syn.contrast(lab, (0.1, 0.9, 0.4), seed=s), syn.contrast(lab, (0.0, 0.2, 1.0), blur=3.0, seed=s + 5)))
        prior = fit_prior([p[0] for p in pairs], [p[1] for p in pairs], bins=32, parzen_sigma=1.0, levels=2)
    res = _register_auto(*test_pair, prior)
    assert _alphas(res) == [1.0, 1.0], res.prior_weights
    assert [w for w in res.warnings if "the prior was given no weight at any level" in w]  # the user is told


def test_one_pair_prior_gets_no_weight(test_pair):
    """One-pair priors from other subjects or slices, at the alpha 0.7 they used to get, were worse than no prior on
    half the draws (benchmarks/README.md): auto now gives them none, runs exactly as no prior, and says how to use one."""
    one = fit_prior(*_pair(T1, T2, 1), bins=32, parzen_sigma=1.0, levels=2)
    res = _register_auto(*test_pair, one)
    assert _alphas(res) == [1.0, 1.0]
    assert all("one training pair" in r["reason"] for r in res.prior_weights)
    (w,) = [w for w in res.warnings if "no weight at any level" in w]
    assert "one training pair" in w and "give alpha" in w and "far from it" not in w
    np.testing.assert_allclose(res.field, register(*test_pair, warn=False, **FAST).field, atol=1e-6)
    forced = register(*test_pair, prior=one, alpha=0.7, warn=False, **FAST)  # an explicit alpha still uses it
    assert np.abs(forced.field - res.field).max() > 1e-3


def test_a_one_pair_prior_of_another_modality_pair_is_named_as_such(test_pair):
    """Of the reasons for no weight the pair's own misfit comes before the missing spread: it says more."""
    res = _register_auto(*test_pair, _prior(T1, syn.PD_NONMONO, seeds=(1,)))  # one pair of another modality pair
    assert _alphas(res) == [1.0, 1.0]
    assert "does not describe this pair" in res.prior_weights[-1]["reason"]


def test_auto_gives_no_weight_to_a_prior_the_order_check_flags(test_pair):
    """A one-pair prior trained the wrong way round kept a one-pair prior's conservative weight (alpha 0.7) on a
    BraTS pair and moved it further than no prior; flagged by the order check, it now gets none, and says so."""
    prior = _prior(T2, T1, seeds=(1,))
    res = _register_auto(*test_pair, prior)
    flagged = [w for w in res.warnings if "far better with fixed and moving swapped" in w]
    assert len(flagged) == 1 and flagged[0].endswith("alpha auto gives it no weight: the result is mutual information alone")
    np.testing.assert_array_equal(res.field, register(*test_pair, warn=False, **FAST).field)
    fixed = register(*test_pair, prior=prior, alpha=0.4, warn=False, **FAST)  # a weight the user chose is kept
    assert any("far better with fixed and moving swapped" in w and "no weight" not in w for w in fixed.warnings)
    assert np.abs(fixed.field - res.field).max() > 1e-3


def test_the_order_warning_needs_the_fitted_intensities_to_agree(test_pair, monkeypatch):
    """The raw KLs compare the pair on the prior's intensity scale; a right-order prior whose scale differs (BraTS
    slices of the same patient) was flagged as swapped on 3 of 10 draws. The warning now also needs the swapped
    orientation to fit better once each orientation has its own intensity maps."""
    from priorreg import calibration, normalise, prior_warnings
    from priorreg.checks import validate
    from priorreg.deformable import prior_table

    right, swapped = _prior(T1, T2), _prior(T2, T1)
    for prior, want in ((right, False), (swapped, True)):
        inp = validate(*test_pair, prior=prior, overrides={**FAST, "alpha": "auto"})
        pyr = normalise.normalise(inp)
        images = pyr.fixed[0], pyr.moving[0], prior_table(inp, 0), pyr.spec, pyr.mask[0]
        assert calibration.swapped_after_fit(*images) is want
        f, m = pyr.fixed[0], pyr.moving[0]  # the same on another intensity scale: the fits undo it
        assert calibration.swapped_after_fit(0.7 * f + 0.2, 1.3 * m - 0.1, *images[2:]) is want
    # The raw KLs of a flagged BraTS draw (2.70 as given, 1.51 swapped) with a right-order prior: no warning now.
    monkeypatch.setattr(prior_warnings, "modality_order_check", lambda *a, **k: (2.70, 1.51))
    res = _register_auto(*test_pair, right)
    assert not [w for w in res.warnings if "swapped" in w] and _alphas(res) != [1.0, 1.0]
    res = _register_auto(*test_pair, swapped)
    assert [w for w in res.warnings if "far better with fixed and moving swapped" in w]


def test_auto_at_alpha_one_is_mutual_information_alone(test_pair):
    """A level where auto chooses 1 runs exactly as alpha=1 (no fitted intensity maps, same field)."""
    prior = _prior(T2, T1)  # swapped: auto chooses 1 everywhere
    res = _register_auto(*test_pair, prior, prior_intensity_fit="affine")
    assert _alphas(res) == [1.0, 1.0]
    one = register(*test_pair, prior=prior, alpha=1.0, **{**FAST, "prior_intensity_fit": "affine"})
    np.testing.assert_allclose(res.field, one.field, atol=1e-6)


def test_choose_alpha_rule():
    class P:
        n_pairs, pair_kl = 3, np.array([[0.01, 0.01, 0.01]])

    a, rec = prior_weight.choose_alpha(P, 0, dict(kl=0.01, mi=0.5, prior_mi=0.5))
    assert a == pytest.approx(prior_weight.ALPHA_MIN)
    a, rec = prior_weight.choose_alpha(P, 0, dict(kl=0.5, mi=0.5, prior_mi=0.5))  # KL = the prior's MI
    assert a == 1.0 and "does not describe" in rec["reason"]
    P.pair_kl = np.array([[0.3, 0.3, 0.3]])  # training pairs disagree
    a, rec = prior_weight.choose_alpha(P, 0, dict(kl=0.01, mi=0.5, prior_mi=0.5))
    assert a == 1.0 and "disagree" in rec["reason"]
    # Both too far: the spread is named, so the pair (maybe one of the prior's own training pairs) is not blamed.
    a, rec = prior_weight.choose_alpha(P, 0, dict(kl=0.5, mi=0.5, prior_mi=0.5))
    assert a == 1.0 and "disagree" in rec["reason"]
    json.dumps(rec)  # goes into report.json as it is
    # Close after the intensity fit, far before it: the fit did the matching (a prior from the same patient's other
    # slices got weight and made BraTS slices worse, KL 2.9-5.2 x its MI before the fit, 0.2-0.5 after).
    P.pair_kl = np.array([[0.01, 0.01, 0.01]])
    ev = dict(kl=0.01, mi=0.5, prior_mi=0.5)
    assert prior_weight.choose_alpha(P, 0, ev, dict(kl_before=0.4))[0] == pytest.approx(prior_weight.ALPHA_MIN)
    a, rec = prior_weight.choose_alpha(P, 0, ev, dict(kl_before=0.75))  # 1.5 x MI: half the trust
    assert a == pytest.approx(1 - 0.5 * (1 - prior_weight.ALPHA_MIN)) and rec["before_fit_ratio"] == pytest.approx(1.5)
    a, rec = prior_weight.choose_alpha(P, 0, ev, dict(kl_before=1.5))
    assert a == 1.0 and "before the intensity fit" in rec["reason"] and "the fit, not a shared relation" in rec["reason"]
    a, rec = prior_weight.choose_alpha(P, 0, ev)  # no intensity fit: the KL is the one before it, judged by the fit ramp
    assert a == pytest.approx(prior_weight.ALPHA_MIN) and rec["before_fit_ratio"] is None
    P.n_regions = 4  # a regional prior is far at the start by design (the circle phantom: 1.3-1.9 x MI before the fit)
    a, rec = prior_weight.choose_alpha(P, 0, dict(ev, kl_fixed=0.01), dict(kl_before=1.5))
    assert a == pytest.approx(prior_weight.ALPHA_MIN) and "before the intensity fit" not in rec["reason"]


def test_a_prior_set_aside_for_its_intensity_scale_is_named_as_such(test_pair, monkeypatch):
    """The no-weight warning said "far from it ... another modality pair or other anatomy" when only the KL before the
    intensity fit had decided; the pair was close after it."""
    monkeypatch.setattr(prior_weight, "CALIBRATION_RANGE", (0.0, 1e-9))  # every pair is "far before the fit"
    res = _register_auto(*test_pair, _prior(), prior_intensity_fit="affine")
    assert _alphas(res) == [1.0, 1.0]
    (w,) = [w for w in res.warnings if "no weight at any level" in w]
    assert "prior's intensity scale" in w and "far from it" not in w


# --------------------------------------------------------------------------- register() and the CLI


def test_auto_is_the_default_with_a_prior(test_pair):
    res = register(*test_pair, prior=_prior(), **FAST)
    assert res.options.alpha == "auto" and len(res.prior_weights) == FAST["levels"]
    res = register(*test_pair, alpha="auto", **FAST)  # no prior: mutual information alone
    assert res.options.alpha == 1.0 and res.prior_weights == []
    res = register(*test_pair, prior=_prior(), alpha=0.4, **FAST)  # an explicit alpha is kept
    assert res.options.alpha == 0.4 and res.prior_weights == []


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "priorreg", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PRIORREG_THREADS": "1"})


@pytest.mark.parametrize("right", [True, False], ids=["right prior", "swapped prior"])
def test_cli_auto(tmp_path, test_pair, right):
    import SimpleITK as sitk

    f, m = test_pair
    names = []
    for j, seed in enumerate((1, 2, 3)):
        a, b = _pair(T1, T2, seed)
        for name, img in ((f"tf{j}.nii.gz", a), (f"tm{j}.nii.gz", b)):
            sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.float32)), str(tmp_path / name))
        names.append((f"tf{j}.nii.gz", f"tm{j}.nii.gz"))
    for name, img in (("f.nii.gz", f), ("m.nii.gz", m)):
        sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.float32)), str(tmp_path / name))
    first, second = ([n[0] for n in names], [n[1] for n in names]) if right else ([n[1] for n in names], [n[0] for n in names])
    tr = _cli("train", "--fixed", *first, "--moving", *second, "--out", "p.npz", "--bins", 32, "--parzen-sigma", 1,
              "--levels", 2, cwd=tmp_path)
    assert tr.returncode == 0, tr.stderr
    alpha = ["--alpha", "auto"] if right else []  # with a prior and no --alpha, auto is the default
    r = _cli("register", "f.nii.gz", "m.nii.gz", "--prior", "p.npz", *alpha, "--out", "out", "--levels", 2,
             "--max-iterations", 15, "--local-weight", 0, "--mind-weight", 0, "--linear", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    weights = rep.get("prior_weights") or rep.get("result", {}).get("prior_weights")
    alphas = [w["alpha"] for w in weights]
    assert (min(alphas) < 0.9) if right else (min(alphas) >= 0.95), weights


@cuda
def test_auto_on_cuda_chooses_and_lands_like_cpu():
    """alpha="auto" with every MR term on (regional MI, MIND-SSC, the intensity fit, the conditional KL):
    CUDA chooses the CPU's alphas and reaches the CPU's solution (not bit for bit: conftest)."""
    f, m, v, lab = syn.case(SHAPE, T2, max_disp=2.0, seed=0)
    kw = dict(prior=_prior(), alpha="auto", prior_term="ckl", levels=2, max_iterations=20, bins=32, parzen_sigma=1.0,
              linear="none", dtype="float64", warn=False)
    rc, rg = register(f, m, device="cpu", **kw), register(f, m, device="cuda", **kw)
    assert rc.options.mind_weight > 0 and rc.options.local_weight > 0 and rc.options.prior_intensity_fit == "affine"
    assert min(_alphas(rc)) < 1
    assert _alphas(rg) == pytest.approx(_alphas(rc), abs=0.02)
    assert_same_solution(rc, rg, v, lab > 0)


def test_cli_says_once_that_a_one_pair_prior_gets_no_weight(tmp_path, test_pair):
    """One line, not one per level, and it says how to use the prior anyway."""
    import SimpleITK as sitk

    fit_prior(*_pair(T1, T2, 1), bins=32, parzen_sigma=1.0, levels=2).save(tmp_path / "one.npz")
    for name, img in zip(("f.nii.gz", "m.nii.gz"), test_pair):
        sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.float32)), str(tmp_path / name))
    r = _cli("register", "f.nii.gz", "m.nii.gz", "--prior", "one.npz", "--out", "out", "--levels", 2,
             "--max-iterations", 5, "--linear", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "one training pair" in line]
    assert len(notes) == 1 and notes[0].startswith("priorreg: warning: the prior was given no weight") and "give alpha, e.g. 0.7" in notes[0]


def test_the_unused_prior_warning_gives_the_reason_auto_recorded():
    """A prior whose training pairs disagree was blamed on the pair ("far from it; another modality?")."""
    from types import SimpleNamespace

    from priorreg.prior_warnings import unused_prior_warnings
    from priorreg.options import AUTO

    inp = SimpleNamespace(prior=SimpleNamespace(notes={}), options=SimpleNamespace(alpha=AUTO), mask=None)
    spread = dict(alpha=1.0, kl=0.11, reason="the prior's training pairs disagree (spread 3.87 x its MI): mutual information alone")
    far = dict(alpha=1.0, kl=0.9, reason="the prior does not describe this pair (KL 2.10 x its MI): mutual information alone")
    (w,) = unused_prior_warnings(inp, [SimpleNamespace(prior_weight=spread)])
    assert "training pairs disagree (spread 3.87 x its MI)" in w and "far from it" not in w
    (w,) = unused_prior_warnings(inp, [SimpleNamespace(prior_weight=far)])
    assert "far from it (KL to it 0.90 nats" in w


def test_a_prior_learned_within_masks_used_without_one_says_so():
    """A prior trained inside a brain mask, used on an unmasked pair, got no weight with the advice "was it
    learned on another modality pair or other anatomy?"; the file did not record its masks."""
    from priorreg import io as pio

    data = os.path.join(os.path.dirname(__file__), "..", "src", "priorreg", "data", "brainweb")
    t1, pd = (pio.read_image(os.path.join(data, n)) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    mask = t1.array > 0.3 * t1.array.max()
    flip = [x.with_array(np.ascontiguousarray(np.flip(x.array, 1))) for x in (t1, pd)]  # a second pair that agrees with
    prior = fit_prior([t1, flip[0]], [pd, flip[1]], masks=[mask, np.flip(mask, 1)], levels=2)  # the first: auto weighs it
    assert prior.notes == {"masked": True} and fit_prior([t1], [pd], levels=2).notes == {}
    moved = pd.with_array(np.roll(pd.array, 2, axis=1))
    res = register(t1, moved, prior=prior, levels=2, warn=False)
    assert _alphas(res) == [1.0, 1.0] and "it was learned within masks and this pair has none" in res.warnings[-1]
    res = register(t1, moved, prior=prior, levels=2, mask=mask, warn=False)
    assert all(a < 1 for a in _alphas(res)) and not res.warnings
    # a fixed alpha is warned about with the same cause (it named "another modality pair or other anatomy")
    res = register(t1, moved, prior=prior, alpha=0.4, levels=2, warn=False)
    (far,) = [w for w in res.warnings if "alpha='auto' would give it none" in w]
    assert "it was learned within masks and this pair has none" in far, far
    # also where the moving image covers part of the anatomy (the deformable stage then samples a mask of its own)
    A, o = moved.index_to_world()
    part = pio.Image(np.ascontiguousarray(moved.array[60:]), moved.spacing, tuple(o + A @ [60, 0]), moved.direction)
    res = register(t1, part, prior=prior, alpha=0.4, levels=2, warn=False)
    (far,) = [w for w in res.warnings if "alpha='auto' would give it none" in w]
    assert "it was learned within masks and this pair has none" in far, far
