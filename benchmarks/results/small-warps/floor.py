"""EPE of the default at zero warp: what pulls the field off an aligned pair. usage: floor.py GEN NOISE BIAS VARIANT..."""
import sys, json
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases as C, cases_more as CM, cases_linear as CL, run as R
gen, noise, bias = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
oc = C.corrupt
C.corrupt = lambda img, rng, noise=0.02, bias=0.15: oc(img, rng, noise, BIAS)
BIAS = bias
gens = {
 "brainweb": lambda s: C.real_2d("brainweb", seed=s, max_disp=0.0, noise=noise),
 "ixi": lambda s: C.real_2d("ixi", seed=s, max_disp=0.0, noise=noise),
 "mni-ax-pd": lambda s: C.brain_2d("axial", "pd", seed=s, max_disp=0.0, noise=noise),
 "prostate": lambda s: CL.prostate_3d(seed=s, max_mm=0.0, noise=noise),
}
for v in sys.argv[4:]:
    kw0 = eval("dict(" + ("" if v == "default" else v) + ")")
    out = []
    for s in (901, 902):
        case = gens[gen](s)
        d = case["fixed"].ndim
        sp = case.get("spacing") or (1.0,) * d
        h = np.asarray(sp).reshape(d, *([1] * d)); m = case["mask"] if case.get("mask") is not None else np.ones(case["fixed"].shape, bool)
        kw = dict(R._setting(case)); kw.update(kw0)
        r = priorreg.register(case["fixed"], case["moving"], spacing=sp, warn=False, **kw)
        out.append(round(float(np.sqrt(((r.field / h) ** 2).sum(0))[m].mean()), 3))
    print(gen, noise, bias, v, out, flush=True)
