"""Held-out draws (seeds 600-604, 3D 600-601): does the nearly-aligned stiffening trigger?"""
import json, sys
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(1)
import priorreg, seeds as S, run as R
for gen, seeds in (("mni3d-2mm-t2", (600, 601)), ("brats3d-2mm-flair-t1c", (600, 601)), ("mni-axial-t2", (600, 601, 602, 603, 604)),
                   ("brainweb-t1-pd", (600, 601, 602, 603, 604)), ("ixi-t2-pd", (600, 601, 602, 603, 604))):
    for seed in seeds:
        case = S.make_case(gen, seed)
        kw = dict(R._setting(case))
        r = priorreg.register(case["fixed"], case["moving"], spacing=case.get("spacing"), warn=False, **kw)
        print(json.dumps(dict(gen=gen, seed=seed, epe=round(R.metrics(case, r.field)["epe_mean"], 4), coarse=r.history[-1].coarse_displacement)), flush=True)
