"""A moving image of coarser voxels than the fixed one (priorreg.working_grid, issue 17): where should the
deformable stage work? BraTS FLAIR at 1 mm (fixed, cropped to the brain with an 8-voxel margin, pulled through a
known smooth field v: max 4 mm in the brain, Gaussian sigma 15 mm) against the same patient's T1c blurred
(std 0.42 s mm) and sampled every s mm (moving). The truth is u = v on the fixed grid; EPE = mean |u - v| (mm)
in the brain mask. The default preset, no prior; variants set the working grid's factors:

    default  the rule in priorreg.working_grid (at the time it runs)
    moving   every axis on the moving image's voxels: 2^floor(log2(s)) (the first rule tried, any ratio)
    half     half that
    full     every level on the fixed grid (the behaviour before)

    python benchmarks/results/coarse-moving/coarse_moving.py TABLE > rows.jsonl

TABLE: validation (s 2 and 4, seeds 1-2: moving vs full, then half at s 4), validation2 (s 3 and 4, seeds
3-4), final (s 2.5, 3 and 4, seeds 5-6, default vs full). Needs nibabel and ../shared/data.
"""
import json
import math
import os
import sys
import time
import warnings

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

import priorreg
import priorreg.working_grid as wg

SHARED = os.environ.get("PRIORREG_SHARED_DATA", os.path.join(os.path.dirname(__file__), *[".."] * 4, "shared", "data"))
PATIENT = os.path.join(SHARED, "brats2013_deepmedic", "brats_2013_pat000{}_1", "{}")
RULE = wg.working_factors


def _power(fix, mov, levels, divide=1):
    ratio = wg.moving_resolution(fix, mov) / np.asarray(fix.spacing, float)
    return tuple(max(1, 2 ** int(math.floor(math.log2(r) + 1e-3)) // divide) for r in ratio)


VARIANTS = {"default": RULE, "moving": _power, "half": lambda f, m, lv: _power(f, m, lv, 2),
            "full": lambda f, m, lv: (1,) * f.ndim}
TABLES = {"validation": [(s, seeds, ("moving", "full")) for s in (2, 4) for seeds in [(1, 2)]] + [(4, (1, 2), ("half",))],
          "validation2": [(4, (3, 4), ("default", "full")), (3, (3, 4), ("full", "moving"))],
          "final": [(s, (5, 6), ("default", "full")) for s in (2.5, 3, 4)]}


def load(pat, name):
    return nib.load(PATIENT.format(pat, name)).get_fdata().astype(np.float32)


def case(pat, s, seed, max_mm=4.0, sigma_mm=15.0):
    rng = np.random.default_rng(seed)
    f, m = load(pat, "Flair_subtrMeanDivStd.nii.gz"), load(pat, "T1c_subtrMeanDivStd.nii.gz")
    brain = load(pat, "brainmask.nii.gz") > 0.5
    idx = np.argwhere(brain)
    box = tuple(slice(a, c) for a, c in zip(np.maximum(idx.min(0) - 8, 0), np.minimum(idx.max(0) + 9, brain.shape)))
    f, m, brain = f[box], m[box], brain[box]
    v = np.stack([ndi.gaussian_filter(rng.normal(size=f.shape), sigma_mm) for _ in range(3)])
    v *= max_mm / np.linalg.norm(v, axis=0)[brain].max()
    fixed = ndi.map_coordinates(f, np.indices(f.shape, dtype=np.float64) + v, order=1, mode="nearest")
    y = np.indices(tuple(int(n // s) for n in m.shape), dtype=np.float64) * s
    moving = ndi.map_coordinates(ndi.gaussian_filter(m, 0.42 * s), y, order=1, mode="nearest")
    return (priorreg.Image(fixed.astype(np.float32), spacing=(1.0,) * 3),
            priorreg.Image(moving.astype(np.float32), spacing=(float(s),) * 3), brain, v)


def main(table):
    warnings.simplefilter("ignore")
    for s, seeds, variants in TABLES[table]:
        for pat in (5, 6):
            for seed in seeds:
                fixed, moving, brain, v = case(pat, s, seed)
                row = dict(pat=pat, s=s, seed=seed, noreg=round(float(np.linalg.norm(v, axis=0)[brain].mean()), 3))
                for name in variants:
                    wg.working_factors = VARIANTS[name]
                    t0 = time.time()
                    r = priorreg.register(fixed, moving)
                    row[name] = round(float(np.linalg.norm(r.field - v, axis=0)[brain].mean()), 3)
                    row[name + "_s"] = round(time.time() - t0, 1)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
