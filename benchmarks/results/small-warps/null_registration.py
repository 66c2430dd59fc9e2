"""The null re-registration: register fixed to the moving warped by the result; its field measures the floor."""
import sys, json
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(1)
import priorreg, cases as C, cases_more as CM, cases_linear as CL, run as R
def stats(case):
    F, M = case["fixed"], case["moving"]
    d = F.ndim; sp = case.get("spacing") or (1.0,) * d
    h = np.asarray(sp).reshape(d, *([1] * d)); m = case["mask"] if case.get("mask") is not None else np.ones(F.shape, bool)
    kw = R._setting(case)
    r = priorreg.register(F, M, spacing=sp, warn=False, **kw)
    Mw = priorreg.warp(M, r.field, spacing=sp, fill=None).array
    q = priorreg.register(F, Mw, spacing=sp, warn=False, **kw)
    u, v, t = r.field / h, q.field / h, case["true_field"] / h
    n = lambda a: np.sqrt((a ** 2).sum(0))[m]
    rms = lambda a: float(np.sqrt((a ** 2).sum(0)[m].mean()))
    return dict(none=round(n(t).mean(), 3), epe=round(n(u - t).mean(), 3), epe_corr=round(n(u - v - t).mean(), 3),
                u=round(rms(u), 3), v=round(rms(v), 3), ratio=round(rms(u) / rms(v), 2), s=round(r.seconds, 1))
gens = {
 "brainweb": lambda s, a: C.real_2d("brainweb", seed=s, max_disp=a),
 "ixi": lambda s, a: C.real_2d("ixi", seed=s, max_disp=a),
 "mni-ax-pd": lambda s, a: C.brain_2d("axial", "pd", seed=s, max_disp=a),
 "spine3d": lambda s, a: CM.spine_3d(seed=s, max_disp=a),
 "prostate": lambda s, a: CL.prostate_3d(seed=s, max_mm=a * 2),
}
for g in sys.argv[1].split(","):
    for a in [float(x) for x in sys.argv[2].split(",")]:
        for s in [int(x) for x in sys.argv[3].split(",")]:
            print(json.dumps(dict(gen=g, disp=a, seed=s, **stats(gens[g](s, a)))), flush=True)
