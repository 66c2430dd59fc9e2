"""Modality-order check (priorreg.calibration.modality_order_check) on benchmark cases, with the
right-order prior (fit as benchmarks/run.py's case_prior does) and with a swapped one
(fit_prior(moving_list, fixed_list, same settings)). Each row also holds the KLs after each orientation's own
intensity fit (fit_given, fit_swapped: what calibration.swapped_after_fit compares; rows-fitted.jsonl).

Replicates priorreg.api._run up to its order check (prior_warnings.check_prior_order): validate -> prealign -> after_prealign ->
normalise -> modality_order_check(pyr.fixed[0], pyr.moving[0], prior_table(work, 0), pyr.spec, pyr.mask[0]).
Settings: run.py's _setting(case) (preset "mr"/"functional" per kind), alpha="auto" (what register()
does with a prior and no alpha: the linear stage is then MI alone, so it is estimated once per case).
No mask (run.py passes none).

    PYTHONPATH=src:benchmarks python3 benchmarks/results/modality-order/order_check.py [--cases ...] [--extra-seeds] [--out rows.jsonl]

The user's case: BraTS 2013 patients 5 and 6 (T1c_subtrMeanDivStd, Flair_subtrMeanDivStd from ../shared/data),
whole volumes resampled to 2 mm (SimpleITK, linear), as a new user prepared them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["PRIORREG_THREADS"] = "1"
import run as R  # noqa: E402  (benchmarks/run.py: settings, case_prior)
import cases as C  # noqa: E402
import cases_more as CM  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
import priorreg  # noqa: E402
from priorreg import histogram as hist  # noqa: E402
from priorreg import spatial  # noqa: E402
from priorreg.calibration import ORDER_SAMPLES, fit_intensity_maps, modality_order_check, swapped_prior_message  # noqa: E402
from priorreg.checks import validate  # noqa: E402
from priorreg.deformable import prior_table, uses_prior  # noqa: E402
from priorreg.normalise import normalise  # noqa: E402
from priorreg.prealign import after_prealign, prealign  # noqa: E402
from priorreg.transform import rotation_angle  # noqa: E402

BASE = [
    # 2D MR
    "mni-axial-t2", "mni-axial-pd", "mni-sagittal-t2", "mni-sagittal-pd", "brainweb-t1-pd", "ixi-t2-pd",
    "brainweb-t1-pd-offset", "ixi-t2-pd-offset",
    # 2D functional
    "petct-real", "spect-petct-selfprior", "spect-petct-selfprior-rescanned", "sim-petct-thorax",
    "sim-spectct-thorax", "sim-spectct-thorax-rescanned", "sim-petct-brain", "sim-spectct-brain",
    # 3D
    "mni3d-2mm-t2", "brats3d-2mm-flair-t1c", "brats3d-2mm-flair-t1c-offset", "spine3d-t1w-t2w",
    "prostate3d-adc-hbv-1mm", "prostate3d-adc-hbv-4mm",
]
# other draws of the generators (tuning seeds 101-161 and held-out seeds 300+, as benchmarks/seeds.py names them)
EXTRA = {
    "mni-axial-t2@s301": lambda: C.brain_2d("axial", "t2", seed=301),
    "mni-axial-pd@s302": lambda: C.brain_2d("axial", "pd", seed=302),
    "mni-sagittal-t2@s303": lambda: C.brain_2d("sagittal", "t2", seed=303),
    "mni-sagittal-pd@s304": lambda: C.brain_2d("sagittal", "pd", seed=304),
    "brainweb-t1-pd@s305": lambda: C.real_2d("brainweb", seed=305),
    "ixi-t2-pd@s306": lambda: C.real_2d("ixi", seed=306),
    "sim-petct-thorax@s130": lambda: CM.sim_thorax("pet", seed=130),
    "sim-spectct-thorax@s131": lambda: CM.sim_thorax("spect", seed=131),
    "sim-petct-brain@s140": lambda: CM.sim_brain("pet", seed=140),
    "sim-spectct-brain@s141": lambda: CM.sim_brain("spect", seed=141),
    "spect-petct-selfprior@s121": lambda: CM.spect_petct_selfprior(seed=121),
    "mni3d-2mm-t2@s107": lambda: C.brain_3d("t2", seed=107),
    "brats3d-2mm-flair-t1c@s150": lambda: CM.brats_3d(2, seed=150),
    "spine3d-t1w-t2w@s160": lambda: CM.spine_3d(seed=160),
    "spine3d-t1w-t2w@s161": lambda: CM.spine_3d(seed=161),
}
USER = "user-brats-2mm-pat6-T1c<-FLAIR,prior-pat5"
SLOW = {"brats3d-1mm-flair-t1c": lambda: CM.brats_3d(1, seed=51)}


def prior_stats(Q: torch.Tensor) -> dict:
    """MI of the floored prior table, and how far it is from its own transpose (its order-sensitivity)."""
    logQ = torch.log(Q)
    return dict(prior_mi=float(hist.mutual_information(Q)),
                prior_asym_kl=float((Q * (logQ - logQ.T)).sum()),  # KL(Q || Q^T)
                prior_asym_kl_rev=float((Q.T * (logQ.T - logQ)).sum()))


def pair_mi(pyr, work) -> float:
    """MI of the pair's Parzen joint histogram as the check samples it (prior's ranges, same seed)."""
    f, m = spatial.paired_samples(pyr.fixed[0], pyr.moving[0], pyr.mask[0], ORDER_SAMPLES, 0, "x")
    S = hist.smoothing_matrix(pyr.spec.bins, pyr.spec.parzen_sigma, device=f.device)
    P = hist.parzen_joint_histogram(f, m, pyr.spec.ranges, S)
    return float(hist.mutual_information(P, pyr.spec.eps))


def one_check(fixed, moving, spacing, prior, over, lin=None, do_linear=True):
    inp = validate(fixed, moving, prior=prior, spacing=spacing, overrides=over)
    if lin is None and do_linear:
        lin = prealign(inp)
    work, resampled = after_prealign(inp, lin)
    pyr = normalise(work)
    assert uses_prior(work)
    Q = prior_table(work, 0)
    kg, ks = modality_order_check(pyr.fixed[0], pyr.moving[0], Q, pyr.spec, pyr.mask[0])
    fg = fit_intensity_maps(pyr.fixed[0], pyr.moving[0], Q, pyr.spec, pyr.mask[0], min_gain=0.0)[3]  # as swapped_after_fit
    fs = fit_intensity_maps(pyr.moving[0], pyr.fixed[0], Q, pyr.spec, pyr.mask[0], min_gain=0.0)[3]
    out = dict(given=kg, swapped=ks, ratio=ks / kg, margin=kg - ks, fit_given=fg, fit_swapped=fs,
               warns=swapped_prior_message("register()", kg, ks) is not None,
               resampled=bool(resampled), pair_mi=pair_mi(pyr, work), **prior_stats(Q))
    return out, lin


def measure(name, fixed, moving, spacing, s, tr_f, tr_m, kind):
    t0, c0 = time.perf_counter(), time.process_time()
    fp = dict(bins=s["bins"], parzen_sigma=s["parzen_sigma"], levels=s["levels"])
    right = priorreg.fit_prior(tr_f, tr_m, **fp)
    swapped = priorreg.fit_prior(tr_m, tr_f, **fp)
    over = dict(s, alpha="auto")
    r, lin = one_check(fixed, moving, spacing, right, over)
    w, _ = one_check(fixed, moving, spacing, swapped, over, lin=lin, do_linear=False)
    linear = None if lin is None else dict(kind=s.get("linear"), degrees=float(rotation_angle(lin.matrix)),
                                           A_minus_I=float(np.linalg.norm(lin.matrix - np.eye(lin.ndim), 2)))
    dim = np.asarray(fixed.array if hasattr(fixed, "array") else fixed).ndim
    return dict(case=name, kind=kind, dim=dim, bins=s["bins"], parzen_sigma=s["parzen_sigma"],
                normalization=right.normalization, linear=linear, right=r, swapped_prior=w,
                seconds=time.perf_counter() - t0, cpu_s=time.process_time() - c0)


def bench_case(name, case):
    s = R._setting(case)
    tr = case["prior_train"]["train"] if isinstance(case["prior_train"], dict) else case["prior_train"]
    return measure(name, case["fixed"], case["moving"], case["spacing"], s, tr[0], tr[1], case["kind"])


def _brats_2mm(name):
    """'T1c0006_2mm.nii.gz' -> patient 6's T1c volume resampled to 2 mm voxels (the new user's files)."""
    import SimpleITK as sitk

    seq, pat = ("T1c", name[3:7]) if name.startswith("T1c") else ("Flair", name[5:9])
    img = sitk.ReadImage(CM._need("brats2013_deepmedic", f"brats_2013_pat{pat}_1", f"{seq}_subtrMeanDivStd.nii.gz"))
    size = [int(round(n * h / 2.0)) for n, h in zip(img.GetSize(), img.GetSpacing())]
    corner = img.TransformContinuousIndexToPhysicalPoint((0.5, 0.5, 0.5))  # the centre of the first 2 x 2 x 2 block
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, corner, (2.0,) * 3, img.GetDirection(), 0.0)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache-" + name)
    sitk.WriteImage(out, path)
    try:
        return priorreg.read_image(path)
    finally:
        os.remove(path)


def user_case():
    rd = _brats_2mm
    fixed, moving = rd("T1c0006_2mm.nii.gz"), rd("Flair0006_2mm.nii.gz")
    t1c5, fl5 = rd("T1c0005_2mm.nii.gz"), rd("Flair0005_2mm.nii.gz")
    s = R.preset_settings("mr", 3)  # what register() with no preset uses in 3D ("default" = "mr")
    # right order: fixed modality (T1c) first; the user's prior was fit_prior([FLAIR5], [T1c5]) = the swapped one here
    return measure(USER, fixed, moving, None, s, [t1c5], [fl5], "user-3d")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="*")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "rows-fitted.jsonl"))
    a = p.parse_args()
    names = a.cases if a.cases else BASE + [USER] + list(EXTRA)
    for name in names:
        try:
            if name == USER:
                row = user_case()
            else:
                gen = {**C.CASES, **EXTRA, **SLOW}[name]
                row = bench_case(name, gen())
        except CM.DataNotFound as e:
            print(f"[skip] {name}: {e}", flush=True)
            continue
        r, w = row["right"], row["swapped_prior"]
        print(f"{name:40s} {row['dim']}D B={row['bins']:2d} right {r['given']:.3f}/{r['swapped']:.3f} "
              f"r={r['ratio']:.2f} m={r['margin']:+.2f} {'WARN' if r['warns'] else ''} | swapped {w['given']:.3f}/"
              f"{w['swapped']:.3f} r={w['ratio']:.2f} m={w['margin']:+.2f} {'WARN' if w['warns'] else 'miss'} "
              f"| cpu {row['cpu_s']:.1f}s", flush=True)
        with open(a.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")



def _brats_reversed(mm, seed):
    """cases_more.brats_3d with the patients' roles exchanged: test pat0006, prior pat0005 (the user's setting)."""
    old = CM.BRATS_TEST, CM.BRATS_PRIOR
    CM.BRATS_TEST, CM.BRATS_PRIOR = old[1], old[0]
    try:
        return CM.brats_3d(mm, seed=seed)
    finally:
        CM.BRATS_TEST, CM.BRATS_PRIOR = old


def user_files_reversed():
    """The user's files with the patients' roles exchanged: register pat5 T1c <- FLAIR, prior from pat6."""
    rd = _brats_2mm
    s = R.preset_settings("mr", 3)
    return measure("user-files-reversed: pat5 T1c<-FLAIR, prior pat6", rd("T1c0005_2mm.nii.gz"), rd("Flair0005_2mm.nii.gz"),
                   None, s, [rd("T1c0006_2mm.nii.gz")], [rd("Flair0006_2mm.nii.gz")], "user-3d")


MORE = {
    "brats3d-2mm-REVERSED(test6,prior5)@s50": lambda: _brats_reversed(2, 50),
    "brats3d-2mm-REVERSED(test6,prior5)@s150": lambda: _brats_reversed(2, 150),
    "brats3d-2mm-flair-t1c@s300": lambda: CM.brats_3d(2, seed=300),
    "spine3d-t1w-t2w@s300": lambda: CM.spine_3d(seed=300),
    "spine3d-t1w-t2w@s301": lambda: CM.spine_3d(seed=301),
    "spine3d-t1w-t2w@s302": lambda: CM.spine_3d(seed=302),
    "mni3d-2mm-t2@s301": lambda: C.brain_3d("t2", seed=301),
    "mni-sagittal-pd@s101": lambda: C.brain_2d("sagittal", "pd", seed=101),
    "mni-sagittal-pd@s102": lambda: C.brain_2d("sagittal", "pd", seed=102),
    "mni-axial-pd@s103": lambda: C.brain_2d("axial", "pd", seed=103),
    "mni-axial-pd@s104": lambda: C.brain_2d("axial", "pd", seed=104),
    "prostate3d-adc-hbv-1mm@s72": lambda: __import__("cases_linear").prostate_3d(seed=72, max_mm=1.0),
}


# further draws of the four generators whose rows lie nearest the boundary (BraTS pat5 test, spinal cord,
# MNI axial PD, MNI sagittal PD)
for _sd in (301, 302, 303, 304):
    MORE[f"brats3d-2mm-flair-t1c@s{_sd}"] = (lambda sd: lambda: CM.brats_3d(2, seed=sd))(_sd)
for _sd in (162, 163, 303, 304, 305):
    MORE[f"spine3d-t1w-t2w@s{_sd}"] = (lambda sd: lambda: CM.spine_3d(seed=sd))(_sd)
for _sd in (105, 106, 305, 306, 307, 308):
    MORE[f"mni-axial-pd@s{_sd}"] = (lambda sd: lambda: C.brain_2d("axial", "pd", seed=sd))(_sd)
    MORE[f"mni-sagittal-pd@s{_sd}"] = (lambda sd: lambda: C.brain_2d("sagittal", "pd", seed=sd))(_sd)


def main_more(names):
    for name in names:
        if name == "user-files-reversed":
            row = user_files_reversed()
        else:
            gen = {**MORE, **SLOW}[name]
            row = bench_case(name, gen())
        r, w = row["right"], row["swapped_prior"]
        print(f"{name:40s} {row['dim']}D B={row['bins']:2d} right {r['given']:.3f}/{r['swapped']:.3f} "
              f"r={r['ratio']:.2f} m={r['margin']:+.2f} {'WARN' if r['warns'] else ''} | swapped {w['given']:.3f}/"
              f"{w['swapped']:.3f} r={w['ratio']:.2f} m={w['margin']:+.2f} {'WARN' if w['warns'] else 'miss'} "
              f"| cpu {row['cpu_s']:.1f}s", flush=True)
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rows-fitted.jsonl"), "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--more":
        main_more(sys.argv[2:] or ["user-files-reversed", *MORE])
    else:
        main()
