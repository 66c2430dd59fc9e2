import sys, json
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(1)
import priorreg, cases as C, cases_more as CM, cases_linear as CL, run as R
from scipy import ndimage as ndi
def ice_stats(case):
    F, M, sp = case["fixed"], case["moving"], case.get("spacing") or (1.0,) * case["fixed"].ndim
    d = F.ndim
    h = np.asarray(sp).reshape(d, *([1] * d)); m = case["mask"] if case.get("mask") is not None else np.ones(F.shape, bool)
    kw = R._setting(case)
    r = priorreg.register(F, M, spacing=sp, warn=False, **kw)
    q = priorreg.register(M, F, spacing=sp, warn=False, **kw)
    u, v = r.field / h, q.field / h
    idx = np.indices(u.shape[1:], dtype=float)
    vu = np.stack([ndi.map_coordinates(c, idx + u, order=1, mode="nearest") for c in v])
    ice = np.sqrt(((u + vu) ** 2).sum(0)); mag = np.sqrt((u ** 2).sum(0))
    t = case["true_field"] / h
    epe = np.sqrt(((u - t) ** 2).sum(0)); none = np.sqrt((t ** 2).sum(0))
    return dict(none=round(none[m].mean(), 3), epe=round(epe[m].mean(), 3), u=round(mag[m].mean(), 3), ice=round(ice[m].mean(), 3),
                ratio=round(mag[m].mean() / ice[m].mean(), 2), s=round(r.seconds, 1))
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
            case = gens[g](s, a)
            print(json.dumps(dict(gen=g, disp=a, seed=s, **ice_stats(case))), flush=True)
