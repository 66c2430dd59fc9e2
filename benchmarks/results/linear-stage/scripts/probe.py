import json, os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import run as R
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases as C
name = sys.argv[1]
case = C.CASES[name]()
variants = json.loads(sys.argv[2])
for label, ch in variants.items():
    s = R._setting(case); s.update(ch)
    t = time.perf_counter()
    r = priorreg.register(case["fixed"], case["moving"], alpha=1.0, spacing=case["spacing"], **s)
    m = R.metrics(case, r.field)
    emm = float(np.sqrt(((r.field - case["true_field"]) ** 2).sum(0))[case["mask"]].mean())
    print(json.dumps(dict(case=name, variant=label, epe=m["epe_mean"], epe_mm=emm, fold=m["fold_pct"], s=time.perf_counter()-t)), flush=True)
