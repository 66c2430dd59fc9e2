"""Synthetic multi-contrast phantoms with known smooth deformations (test helpers)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def anatomy(shape, seed=0):
    """A 'body' of 4 tissue classes with folded, multi-scale boundaries (like cortex), labels (*shape)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / 0.85) ** 2 for g in grids))
    body = r < 1.0
    noise = sum(
        w * ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / k)
        for w, k in ((1.0, 10), (0.6, 20), (0.3, 40))
    )
    noise /= np.abs(noise).max()
    inner = r + 0.6 * noise
    labels = np.zeros(shape, int)
    labels[body] = 1
    labels[body & (inner < 0.8)] = 2
    labels[body & (inner < 0.55)] = 3
    labels[body & (inner < 0.3)] = 4
    return labels


def contrast(labels, values, blur=1.0, noise=0.01, seed=1):
    rng = np.random.default_rng(seed)
    img = np.asarray(values, float)[labels]
    img = ndimage.gaussian_filter(img, blur)
    return img + noise * rng.standard_normal(img.shape)


def smooth_field(shape, max_disp, sigma=None, seed=2):
    """Smooth random displacement (d, *shape) in voxels with max norm = max_disp."""
    rng = np.random.default_rng(seed)
    d = len(shape)
    sigma = sigma or max(shape) / 6
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(d)])
    v *= max_disp / np.sqrt((v**2).sum(0)).max()
    return v


def deform(image, v, order=1):
    """image(x + v(x)) with v in voxels (pull-back)."""
    shape = image.shape
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    coords = [g + vk for g, vk in zip(grid, v)]
    return ndimage.map_coordinates(image, coords, order=order, mode="nearest")


T1 = (0.0, 0.35, 0.6, 0.9, 0.2)  # background, body, class2, class3, blob
T2_MONO = (0.0, 0.9, 0.6, 0.3, 1.0)  # monotone-decreasing-ish mapping of T1
PD_NONMONO = (0.05, 0.5, 0.95, 0.7, 0.3)  # non-monotone


def case(shape, moving_values, max_disp=3.0, seed=0):
    """(fixed, moving, true field in voxels, labels of fixed, labels of moving).

    fixed(x) = T1(A(x + v(x))), moving = other contrast of A, so registering moving
    onto fixed should recover the pull-back field v.
    """
    lab = anatomy(shape, seed)
    v = smooth_field(shape, max_disp, seed=seed + 10)
    t1 = contrast(lab, T1, seed=seed + 20)
    fixed = deform(t1, v)
    moving = contrast(lab, moving_values, seed=seed + 30)
    return fixed, moving, v, lab
