import sys
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases_linear as CL
kw = eval("dict(" + (sys.argv[1] if len(sys.argv) > 1 else "") + ")")
noise = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
fs = []
for seed in (70, 72, 73):
    case = CL.prostate_3d(seed=seed, max_mm=0.0, noise=noise)
    r = priorreg.register(case["fixed"], case["moving"], spacing=case["spacing"], warn=False, **kw)
    h = np.asarray(case["spacing"]).reshape(3, 1, 1, 1)
    fs.append(r.field / h)
m = case["mask"]
mean = np.mean(fs, 0)
for i, f in enumerate(fs):
    print("seed", i, "EPE", round(float(np.sqrt((f**2).sum(0))[m].mean()), 3), "EPE of (f - mean of 3)", round(float(np.sqrt(((f - mean)**2).sum(0))[m].mean()), 3))
print("EPE of mean field", round(float(np.sqrt((mean**2).sum(0))[m].mean()), 3))
