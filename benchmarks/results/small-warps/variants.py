"""EPE of the default and of variants on generator x max-displacement x seed. usage: var.py GENS DISPS SEEDS VARIANT"""
import sys, json
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(1)
import priorreg, cases as C, cases_more as CM, cases_linear as CL, run as R

gens = {
 "brainweb": lambda s, a: C.real_2d("brainweb", seed=s, max_disp=a),
 "ixi": lambda s, a: C.real_2d("ixi", seed=s, max_disp=a),
 "mni-ax-pd": lambda s, a: C.brain_2d("axial", "pd", seed=s, max_disp=a),
 "mni-ax-t2": lambda s, a: C.brain_2d("axial", "t2", seed=s, max_disp=a),
 "mni-sag-pd": lambda s, a: C.brain_2d("sagittal", "pd", seed=s, max_disp=a),
 "spine3d": lambda s, a: CM.spine_3d(seed=s, max_disp=a),
 "prostate": lambda s, a: CL.prostate_3d(seed=s, max_mm=a * 2),
 "brats2mm": lambda s, a: CM.brats_3d(2, seed=s, max_disp=a),
}
if __name__ == "__main__":  # (restart_variants.py imports gens)
    v = sys.argv[4]
    kw0 = eval("dict(" + ("" if v == "default" else v) + ")")
    for g in sys.argv[1].split(","):
        for a in [float(x) for x in sys.argv[2].split(",")]:
            for s in [int(x) for x in sys.argv[3].split(",")]:
                case = gens[g](s, a)
                kw = dict(R._setting(case)); kw.update(kw0)
                r = priorreg.register(case["fixed"], case["moving"], spacing=case.get("spacing"), warn=False, **kw)
                m = R.metrics(case, r.field)
                none = R.metrics(case, np.zeros_like(r.field))["epe_mean"]
                print(json.dumps(dict(gen=g, disp=a, seed=s, v=v, none=round(none, 4), epe=round(m["epe_mean"], 4), fold=m["fold_pct"])), flush=True)
