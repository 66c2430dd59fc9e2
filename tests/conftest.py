import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _default_dtype_untouched(request):
    """Every test starts with torch's default dtype (float32); test_gradients scopes its float64 to itself."""
    if request.module.__name__ != "test_gradients":
        assert torch.get_default_dtype() == torch.float32, "an earlier test module left torch's default dtype changed"
    yield
