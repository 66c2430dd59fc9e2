"""Benchmark cases: does the nearly-aligned stiffening trigger, and what it changes. usage: trig.py CASE..."""
import json, sys
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(1)
import priorreg, cases as C, run as R
for name in sys.argv[1:]:
    case = C.CASES[name]()
    kw = dict(R._setting(case))
    out = {}
    for f in (1.0, kw.get("nearly_aligned_stiffness", 1.0)):
        r = priorreg.register(case["fixed"], case["moving"], spacing=case.get("spacing"), warn=False, **dict(kw, nearly_aligned_stiffness=f))
        cd = getattr(r.history[-1], "coarse_displacement", None)
        out[f] = (round(R.metrics(case, r.field)["epe_mean"], 4), cd)
    print(json.dumps(dict(case=name, off=out[1.0][0], on=out[max(out)][0], coarse=out[max(out)][1])), flush=True)
