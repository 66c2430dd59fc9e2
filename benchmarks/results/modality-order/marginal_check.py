"""Tried and not adopted (2026-12-06): order_check.py's rows plus a marginal test: KL of the pair's intensity histograms (each image alone)
against the prior's marginals, as given (fixed ~ axis 0, moving ~ axis 1) and swapped.

    python3 benchmarks/results/modality-order/marginal_check.py brats2d mni-axial-pd
"""
import json, os, sys
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.join(_here, "..", ".."), os.path.join(_here, "..", "..", "..", "src")]
import order_check as O
import torch
from priorreg import histogram as hist, spatial

def marg(P, Q):
    p0, p1 = P.sum(1), P.sum(0)
    q0, q1 = Q.sum(1), Q.sum(0)
    kl = lambda a, b: float((a * (torch.log(a.clamp_min(1e-12)) - torch.log(b))).sum())
    return kl(p0, q0) + kl(p1, q1), kl(p0, q1) + kl(p1, q0)

_orig = O.one_check
def one_check(fixed, moving, spacing, prior, over, lin=None, do_linear=True):
    inp = O.validate(fixed, moving, prior=prior, spacing=spacing, overrides=over)
    if lin is None and do_linear:
        lin = O.prealign(inp)
    out, lin = _orig(fixed, moving, spacing, prior, over, lin=lin, do_linear=False)
    work, _ = O.after_prealign(inp, lin)
    pyr = O.normalise(work)
    Q = O.prior_table(work, 0).double()
    f, m = spatial.paired_samples(pyr.fixed[0], pyr.moving[0], pyr.mask[0], O.ORDER_SAMPLES, 0, "x")
    S = hist.smoothing_matrix(pyr.spec.bins, pyr.spec.parzen_sigma, device=f.device)
    P = hist.parzen_joint_histogram(f, m, pyr.spec.ranges, S).double()
    g, s = marg(P, Q)
    out.update(marg_given=g, marg_swapped=s)
    return out, lin
O.one_check = one_check

def brats2d():
    import SimpleITK as sitk, numpy as np, priorreg
    rd = lambda pat, seq: sitk.GetArrayFromImage(sitk.ReadImage(O.CM._need("brats2013_deepmedic", f"brats_2013_pat{pat}_1", f"{seq}_subtrMeanDivStd.nii.gz")))
    f6, t6, f5, t5 = rd("0006", "Flair"), rd("0006", "T1c"), rd("0005", "Flair"), rd("0005", "T1c")
    k6, k5 = f6.shape[0] // 2, f5.shape[0] // 2
    s = O.R.preset_settings("mr", 2)
    return O.measure("user-brats2d-FLAIR<-T1c", f6[k6], t6[k6], (1.0, 1.0), s, [f5[k5]], [t5[k5]], "user-2d")

out = os.path.join(_here, "rows-marginal.jsonl")
names = sys.argv[1:]
for name in names:
    try:
        if name == "brats2d":
            row = brats2d()
        elif name == O.USER:
            row = O.user_case()
        elif name == "user-files-reversed":
            row = O.user_files_reversed()
        else:
            row = O.bench_case(name, {**O.C.CASES, **O.EXTRA, **O.MORE, **O.SLOW}[name]())
    except O.CM.DataNotFound as e:
        print("skip", name, e); continue
    r, w = row["right"], row["swapped_prior"]
    print(f"{name:40s} joint r={r['ratio']:.2f}/{w['ratio']:.2f} marg right {r['marg_given']:.3f}/{r['marg_swapped']:.3f} swapped-prior {w['marg_given']:.3f}/{w['marg_swapped']:.3f}", flush=True)
    open(out, "a").write(json.dumps(row) + "\n")
