"""Energy terms of the aligned BrainWeb pair under a uniform shift t (voxels) along axis 0 / both axes."""
import sys
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases as C, run as R
oc = C.corrupt
noise = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
C.corrupt = lambda img, rng, n=0.02, bias=0.15: oc(img, rng, noise, 0.0 if noise == 0 else 0.15)
case = C.real_2d("brainweb", seed=901, max_disp=0.0, noise=noise)
kw = dict(R._setting(case)); kw.update(levels=1, max_iterations=0, linear="none")
F, M = case["fixed"], case["moving"]
for t in np.arange(-1.0, 1.01, 0.25):
    u = np.zeros((2, *F.shape)); u[0] = t
    r = priorreg.register(F, M, initial_field=u, warn=False, **kw)
    T = r.history[-1].terms[0]
    print(f"t {t:+.2f}", {k: round(v, 5) for k, v in T.items() if k in ("-MI", "-rMI", "MIND")}, round(r.history[-1].energy[0], 5))
