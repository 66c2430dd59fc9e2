"""priorreg: non-rigid multi-modal registration with learned joint-intensity priors.

J(u) = alpha*(-MI) + (1-alpha)*KL(p_u || p_L) + lambda * 1/2 mean|grad u|^2
(Guetter, Xu, Sauer, Hornegger, MICCAI 2005), in PyTorch, 2D and 3D, CPU and CUDA.
"""
from .api import RegistrationResult, register, warp
from .errors import PriorRegError, PriorRegWarning
from .image import Image
from .options import RegistrationOptions
from .prior import Prior, fit_prior

__version__ = "0.1.0"
__all__ = [
    "Image",
    "Prior",
    "PriorRegError",
    "PriorRegWarning",
    "RegistrationOptions",
    "RegistrationResult",
    "fit_prior",
    "register",
    "warp",
]
