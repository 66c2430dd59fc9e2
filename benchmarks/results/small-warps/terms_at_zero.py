"""Per case: finest-level terms with the deformable field at zero vs at the end; EPE of the result and of linear-only.
usage: guard.py CASE... [--set k=v ...]"""
import json, os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases as C, run as R
from priorreg import deformable as D, solver
args = sys.argv[1:]; sets = {}
if "--set" in args:
    i = args.index("--set")
    for kv in args[i + 1:]:
        k, v = kv.split("=")
        try: v = json.loads(v)
        except Exception: pass
        sets[k] = v
    args = args[:i]
REC = {}
orig_gf = D.gradient_flow
def gf(data, reg, u, opts, index, sp, callback):
    if index == 0:
        _, h0 = orig_gf(data, reg, torch.zeros_like(u), opts.replace(max_iterations=0), index, sp, None)
        REC["zero"] = dict(h0.terms[0], J=h0.energy[0])
    u, h = orig_gf(data, reg, u, opts, index, sp, callback)
    if index == 0:
        REC["start"] = dict(h.terms[0], J=h.energy[0]); REC["end"] = dict(h.terms[-1], J=h.energy[-1])
    return u, h
D.gradient_flow = gf
orig_dm = D.deformable
for name in args:
    case = C.CASES[name]()
    kw = dict(R._setting(case)); kw.update(sets)
    pk = {}
    t = time.perf_counter()
    r = priorreg.register(case["fixed"], case["moving"], spacing=case.get("spacing"), warn=False, **kw)
    sec = time.perf_counter() - t
    m = R.metrics(case, r.field)
    # linear only: the field with the deformable part removed = the result of levels=1, max_iterations=0
    r0 = priorreg.register(case["fixed"], case["moving"], spacing=case.get("spacing"), warn=False, **dict(kw, max_iterations=0))
    m0 = R.metrics(case, r0.field)
    none = R.metrics(case, np.zeros_like(r.field))
    z, e = REC["zero"], REC["end"]
    print(json.dumps(dict(case=name, none=round(none["epe_mean"], 4), lin=round(m0["epe_mean"], 4), epe=round(m["epe_mean"], 4), s=round(sec, 1),
                          d={k: round(e[k] - z[k], 5) for k in e if k in z}, zero={k: round(v, 5) for k, v in z.items()})), flush=True)
