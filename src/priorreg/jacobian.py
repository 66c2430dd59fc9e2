"""Jacobian determinant of the map x -> x + u(x): the field's folding diagnostic."""
from __future__ import annotations

import torch

from . import spatial


def jacobian_determinant(u: torch.Tensor, spacing) -> torch.Tensor:
    """det(I + grad u) of the map x -> x + u(x), central differences, physical units."""
    d = u.shape[0]
    rows = []
    for c in range(d):
        g = spatial.gradient(u[c], spacing)  # (d, *S): d u_c / d x_k
        rows.append(g)
    J = torch.stack(rows)  # (c, k, *S)
    J = J.movedim(0, -1).movedim(0, -1)  # (*S, c, k)
    J = J + torch.eye(d, dtype=u.dtype, device=u.device)
    return torch.linalg.det(J)
