"""MIND distance of the aligned noise-free BrainWeb pair under a uniform shift: descriptor interpolated (engine)
vs descriptor of the interpolated image."""
import sys
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
import cases as C
from priorreg import mind, spatial
from priorreg.intensity import normalize
from scipy import ndimage as ndi
oc = C.corrupt
noise = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
C.corrupt = lambda img, rng, n=0.02, bias=0.15: oc(img, rng, noise, 0.0 if noise == 0 else 0.15)
case = C.real_2d("brainweb", seed=901, max_disp=0.0, noise=noise)
F = torch.tensor(normalize(case["fixed"], "percentile"), dtype=torch.float32)
M = torch.tensor(normalize(case["moving"], "percentile"), dtype=torch.float32)
Df, Dm = mind.mind_ssc(F), mind.mind_ssc(M)
m = torch.tensor(case["mask"])
idx = np.indices(F.shape, dtype=float)
for t in np.arange(-1.0, 1.01, 0.25):
    c = idx.copy(); c[0] += t
    Dm_i = torch.stack([torch.tensor(ndi.map_coordinates(d.numpy(), c, order=1, mode="nearest")) for d in Dm])
    Mw = torch.tensor(ndi.map_coordinates(M.numpy(), c, order=1, mode="nearest"), dtype=torch.float32)
    Dw = mind.mind_ssc(Mw)
    a = float(((Dm_i - Df) ** 2).mean(0)[m].mean()); b = float(((Dw - Df) ** 2).mean(0)[m].mean())
    print(f"t {t:+.2f}  interpolated descriptor {a:.5f}   descriptor of interpolated image {b:.5f}")
print("jittered sampling (one uniform random sub-voxel offset per voxel, the same for both images)")
rng = np.random.default_rng(0)
j = rng.uniform(-0.5, 0.5, size=idx.shape)
Df_j = torch.stack([torch.tensor(ndi.map_coordinates(d.numpy(), idx + j, order=1, mode="nearest")) for d in Df])
Fj = ndi.map_coordinates(F.numpy(), idx + j, order=1, mode="nearest")
for t in np.arange(-1.0, 1.01, 0.25):
    c = idx + j; c[0] += t
    Dm_i = torch.stack([torch.tensor(ndi.map_coordinates(d.numpy(), c, order=1, mode="nearest")) for d in Dm])
    a = float(((Dm_i - Df_j) ** 2).mean(0)[m].mean())
    print(f"t {t:+.2f}  jittered {a:.5f}")
