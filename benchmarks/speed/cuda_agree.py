"""How closely CUDA reproduces the CPU run: the pair of tests/test_register.py::test_cpu_and_cuda_agree
and tests/test_mind.py::test_mind_term_cpu_and_cuda_agree, float64, run on the CPU once and on CUDA
twice (CUDA's histogram sums use atomic adds in no fixed order, so two CUDA runs can differ too), then
once more on CUDA with torch.use_deterministic_algorithms(True). Prints iterations per level and the
largest field difference (voxels) to the CPU run.

    PYTHONPATH=src:tests python3 benchmarks/speed/cuda_agree.py
"""
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs, before CUDA starts

import numpy as np
import torch

import synthetic as syn
from priorreg import fit_prior, register

f, m, v, _ = syn.case((64, 72), syn.PD_NONMONO, max_disp=3.0)
prior = fit_prior([f], [syn.deform(m, v)], bins=32, parzen_sigma=1.0, levels=2)
base = dict(levels=2, bins=32, parzen_sigma=1.0, max_iterations=20, dtype="float64")
settings = {"prior, global MI": dict(prior=prior, alpha=0.4), "MIND + regional MI": dict(mind_weight=10.0, local_weight=1.0)}
for name, kw in settings.items():
    ref = register(f, m, device="cpu", **base, **kw)
    print(f"{name}: cpu iterations {[h.iterations for h in ref.history]}")
    for label in ("cuda run 1", "cuda run 2", "cuda deterministic"):
        torch.use_deterministic_algorithms(label == "cuda deterministic")
        try:
            r = register(f, m, device="cuda", **base, **kw)
        except RuntimeError as e:  # an operation without a deterministic CUDA kernel
            print(f"  {label}: {str(e).splitlines()[0]}")
            continue
        diff = np.abs(r.field - ref.field).max()
        print(f"  {label}: iterations {[h.iterations for h in r.history]}, max |field - cpu field| {diff:.3g} voxel, "
              f"final energy {r.history[-1].energy[-1]:.12g} vs cpu {ref.history[-1].energy[-1]:.12g}")
    torch.use_deterministic_algorithms(False)
