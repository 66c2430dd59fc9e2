import sys
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases as C, run as R
oc = C.corrupt
C.corrupt = lambda img, rng, noise=0.02, bias=0.15: oc(img, rng, 0.0, 0.0)
case = C.real_2d("brainweb", seed=901, max_disp=0.0, noise=0.0)
kw = dict(R._setting(case)); kw.update(eval("dict(" + (sys.argv[1] if len(sys.argv) > 1 else "") + ")"))
r = priorreg.register(case["fixed"], case["moving"], warn=False, **kw)
u = r.field; m = case["mask"]
print("mean per axis", u[0][m].mean(), u[1][m].mean(), "abs", np.abs(u[0][m]).mean(), np.abs(u[1][m]).mean())
print("shape", u.shape, "mask frac", m.mean())
for L in r.history: print(L.level, L.iterations, L.stop_reason, {k: round(v, 4) for k, v in L.terms[0].items()}, {k: round(v, 4) for k, v in L.terms[-1].items()})
