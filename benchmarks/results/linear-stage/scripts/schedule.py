"""Linear schedule trial: EPE + linear CPU time on the linear-stage cases and cord seeds. usage: linsched.py"""
import json, os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(1)
import run as R, cases as C, cases_more as CM
import priorreg, priorreg.linear as L, priorreg.prealign as P
orig = L.estimate_linear; tl = []
def est(*a, **k):
    t = time.process_time(); r = orig(*a, **k); tl.append(time.process_time() - t); return r
P.estimate_linear = est
cases = [(n, lambda n=n: C.CASES[n]()) for n in ("brainweb-t1-pd-offset", "ixi-t2-pd-offset", "brats3d-2mm-flair-t1c-offset", "prostate3d-adc-hbv-1mm", "prostate3d-adc-hbv-4mm", "mni3d-2mm-t2", "spine3d-t1w-t2w")]
cases += [(f"spine-{s}", lambda s=s: CM.spine_3d(seed=s)) for s in (801, 802, 803, 804, 805)]
for name, mk in cases:
    case = mk(); tl.clear()
    r = priorreg.register(case["fixed"], case["moving"], spacing=case["spacing"], warn=False)
    m = R.metrics(case, r.field)
    L_ = r.linear
    print(json.dumps(dict(case=name, early=L.EARLY_COARSEST, epe=round(m["epe_mean"], 4), lin_cpu=round(sum(tl), 2), kind=None if L_ is None else L_.kind, rej=None if L_ is None else L_.rejected)), flush=True)
