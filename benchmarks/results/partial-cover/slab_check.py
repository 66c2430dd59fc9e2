"""A moving image that covers part of the fixed one: BraTS FLAIR (fixed, whole brain) and the same patient's
T1c under a known rigid map (6 degrees about a random axis, 8 mm), cropped to an axial slab of 20 or 40 mm.
Mean error (mm) inside the brain where the slab has data: none, the linear stage alone, the default.

    python3 benchmarks/results/partial-cover/slab_check.py 2 1,2,3 > rows.jsonl          # h = 2 mm, seeds
    python3 benchmarks/results/partial-cover/slab_check.py 2 1,2,3 --off > rows-off.jsonl  # samples beyond the slab too

``--off`` restores the deformable stage's samples beyond the moving image's field of view (its edge voxels
repeated), as before ``prealign.inside_moving``."""
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "small-warps"))
from rigid_truth import case  # noqa: E402

import priorreg  # noqa: E402
from priorreg import prealign  # noqa: E402

warnings.simplefilter("ignore")


def slab_case(pat, h, seed, mm):
    """(fixed Image, slab Image, brain, truth u, rows of the fixed grid whose truth lands in the slab)."""
    f, mw, brain, u, sp = case(pat, h, seed)
    fixed = priorreg.Image(f, tuple(sp))
    n = int(round(mm / h))
    z = np.arange(f.shape[2]) * h
    centre = int(np.argmax(brain.sum((0, 1))))  # the brain's widest axial slice
    z0 = max(0, centre - n // 2)
    A, b = fixed.index_to_world()
    slab = priorreg.Image(np.ascontiguousarray(mw[:, :, z0:z0 + n]), tuple(sp), tuple(A @ np.array([0, 0, z0]) + b))
    zt = z[None, None, :] + u[2]  # where the truth lands along the slab's axis (mm)
    covered = (zt >= z0 * h + h) & (zt <= (z0 + n - 2) * h)
    return fixed, slab, brain & covered, u


def main():
    h, seeds = float(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
    if "--off" in sys.argv:
        prealign.MISSED_ANATOMY = float("inf")
    for pat in (5, 6):
        for seed in seeds:
            for mm in (20, 40):
                fixed, slab, region, u = slab_case(pat, h, seed, mm)
                err = lambda field: float(np.linalg.norm(field - u, axis=0)[region].mean())  # noqa: E731
                lin = priorreg.register(fixed, slab, warn=False, max_iterations=0)
                t0 = time.perf_counter()
                r = priorreg.register(fixed, slab, warn=False)
                print(json.dumps(dict(patient=pat, seed=seed, slab_mm=mm, h=h, none=err(np.zeros_like(u)),
                                      linear=err(lin.field), default=err(r.field), seconds=round(time.perf_counter() - t0, 1),
                                      off="--off" in sys.argv, warnings=[w[:80] for w in r.warnings])), flush=True)


if __name__ == "__main__":
    main()
