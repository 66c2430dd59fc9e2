import os
import sys

# Before torch loads its OpenMP runtime: threads sleep at barriers instead of spinning, so the
# suite keeps its share of a busy machine (priorreg/runtime.py has the measurements).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from priorreg.runtime import available_cpus  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, available_cpus()))

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_same_solution(rc, rg, v, mask):
    """CPU run ``rc`` and CUDA run ``rg`` land on the same solution. Not bit for bit: CUDA adds the
    histogram's and the interpolation gradient's contributions with atomic adds in no fixed order,
    so two CUDA runs differ from each other too. Measured on an H200 (benchmarks/speed/cuda_agree.py,
    benchmarks/results/gpu/gpu-run2.log): fields up to 0.1 voxel apart after 20 float64 iterations,
    final energies within 1.3e-3, the same iteration counts."""
    assert len(rc.history) == len(rg.history)
    jc, jg = rc.history[-1].energy[-1], rg.history[-1].energy[-1]
    assert abs(jg - jc) <= 5e-3 * abs(jc), (jc, jg)
    assert np.abs(rc.field - rg.field).max() < 0.3
    epe = [float(np.sqrt(((r.field - v) ** 2).sum(0))[mask].mean()) for r in (rc, rg)]
    assert abs(epe[1] - epe[0]) < 0.05, epe


@pytest.fixture(autouse=True)
def _default_dtype_untouched(request):
    """Every test starts with torch's default dtype (float32); test_gradients scopes its float64 to itself."""
    if request.module.__name__ != "test_gradients":
        assert torch.get_default_dtype() == torch.float32, "an earlier test module left torch's default dtype changed"
    yield
