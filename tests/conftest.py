import os
import sys

# Before torch loads its OpenMP runtime: threads sleep at barriers instead of spinning, so the
# suite keeps its share of a busy machine (priorreg/runtime.py has the measurements).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from priorreg.runtime import available_cpus  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, available_cpus()))

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _default_dtype_untouched(request):
    """Every test starts with torch's default dtype (float32); test_gradients scopes its float64 to itself."""
    if request.module.__name__ != "test_gradients":
        assert torch.get_default_dtype() == torch.float32, "an earlier test module left torch's default dtype changed"
    yield
