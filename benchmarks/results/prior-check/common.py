"""Shared helpers: known smooth warp, EPE."""
import numpy as np
from scipy import ndimage as ndi


def smooth_field(shape, spacing, seed, max_mm, sigma_mm=15.0, translation=None):
    """Random smooth displacement (mm, along array axes), max |v| = max_mm (+ optional translation in mm)."""
    rng = np.random.default_rng(seed)
    d = len(shape)
    v = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), [sigma_mm / s for s in spacing], mode="reflect")
                  for _ in range(d)])
    mag = np.sqrt((v ** 2).sum(0)).max()
    v *= max_mm / mag
    if translation is not None:
        for k in range(d):
            v[k] += translation[k]
    return v.astype(np.float64)


def pull(img, v, spacing, order=1, cval=None):
    """img(x + v(x)) on the same grid (v in mm)."""
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in img.shape], indexing="ij")
    coords = [grid[k] + v[k] / spacing[k] for k in range(img.ndim)]
    return ndi.map_coordinates(img.astype(np.float64), coords, order=order, mode="nearest").astype(np.float32)


def epe(field, truth, mask):
    err = np.sqrt(((np.asarray(field, np.float64) - truth) ** 2).sum(0))
    return float(err[mask > 0].mean())
