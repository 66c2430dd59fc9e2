"""priorreg: non-rigid multi-modal registration with learned joint-intensity priors.

J(u) = alpha*(-MI) + (1-alpha)*KL(p_u || p_L) + lambda * 1/2 mean|grad u|^2
(Guetter, Xu, Sauer, Hornegger, MICCAI 2005), in PyTorch, 2D and 3D, CPU and CUDA.

The public names are imported on first use (PEP 562), so ``import priorreg.cli`` and
``priorreg --help`` do not load torch.
"""
import importlib

from .errors import PriorRegError, PriorRegWarning

__version__ = "0.1.0"
_WHERE = {
    "Image": ".image",
    "Prior": ".prior",
    "RegistrationOptions": ".options",
    "PRESETS": ".options",
    "RegistrationResult": ".result",
    "fit_prior": ".prior",
    "register": ".api",
    "warp": ".resample",
    "invert_field": ".inverse",
    "read_image": ".io",
    "write_image": ".io",
}
__all__ = sorted([*_WHERE, "PriorRegError", "PriorRegWarning"])


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'priorreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_WHERE])
