"""Time a 3D registration on a synthetic phantom: python3 tools/time_3d.py [--shape N N N] [--device cuda]."""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import synthetic as syn  # noqa: E402

import priorreg  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--shape", type=int, nargs=3, default=[96, 112, 96])
p.add_argument("--device", default="cpu")
p.add_argument("--levels", type=int, default=3)
p.add_argument("--force", default=priorreg.RegistrationOptions.force)
p.add_argument("--regularization", type=float, default=priorreg.RegistrationOptions.regularization)
p.add_argument("--bending", type=float, default=priorreg.RegistrationOptions.bending)
p.add_argument("--tolerance", type=float, default=priorreg.RegistrationOptions.tolerance)
a = p.parse_args()
shape = tuple(a.shape)
f, m, v, lab = syn.case(shape, syn.PD_NONMONO, max_disp=4.0)
mask = syn.deform((lab > 0).astype(float), v) > 0.5
kw = dict(levels=a.levels, bins=32, parzen_sigma=1.0, regularization=a.regularization,
          bending=a.bending, tolerance=a.tolerance, device=a.device, force=a.force)
priorreg.register(f[:32, :32, :32], m[:32, :32, :32], **{**kw, "levels": 1, "max_iterations": 3})  # warm-up
if a.device.startswith("cuda"):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
r = priorreg.register(f, m, **kw)
dt = time.perf_counter() - t
e = np.sqrt(((r.field - v) ** 2).sum(0))[mask]
its = [h.iterations for h in r.history]
mem = torch.cuda.max_memory_allocated() / 2**30 if a.device.startswith("cuda") else float("nan")
print(f"shape {shape} device {a.device} threads {torch.get_num_threads()} time {dt:.2f} s iterations {its} "
      f"EPE mean {e.mean():.3f} (before {np.sqrt((v**2).sum(0))[mask].mean():.3f}) p95 {np.percentile(e, 95):.3f} "
      f"fold {r.jacobian_stats['percent_nonpositive']:.3f}% peak GPU mem {mem:.2f} GiB")
