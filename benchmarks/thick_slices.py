"""Thick slices (the per-axis pyramid): BraTS pat0005 T1c (fixed, warped) <- FLAIR, one warp in mm (sigma 20 mm,
max 6 mm in the brain; regulariser_rule.brats_pair) on the 1 mm or 2 mm grid, then k consecutive slices
averaged along the last axis (a thick-slice acquisition: 1 x 1 x k or 2 x 2 x 2k mm), the truth averaged the
same way. Prints one JSON row per run: EPE (mm) in the brain mask for no registration and register() with
no options, and the pyramid's level shapes.

    python3 benchmarks/thick_slices.py SEED K BASE      # BASE: brats-1mm or brats-2mm

Rows of benchmarks/results/thick-slices/: this command for seeds 821-824, run with the library before the
per-axis pyramid (PYTHONPATH=<a checkout of the commit before it>/src) and after.
"""
import json
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import regulariser_rule as RR  # noqa: E402

import priorreg  # noqa: E402


def thick_case(seed, k, base):
    c = RR.brats_pair(seed, tag="b")["b-2mm" if base == "brats-2mm" else "b-1mm"]
    n = (c["fixed"].shape[2] // k) * k

    def thick(a):
        a = a[..., :n]
        return a.reshape(a.shape[:-1] + (n // k, k)).mean(-1)

    truth = np.stack([thick(w) for w in c["true_field"]])
    spacing = tuple(c["spacing"][:2]) + (c["spacing"][2] * k,)
    return thick(c["fixed"]), thick(c["moving"]), truth, thick(c["mask"].astype(float)) > 0.5, spacing


def epe(field, truth, mask):
    return float(np.sqrt(((field - truth) ** 2).sum(0))[mask].mean())


if __name__ == "__main__":
    seed, k, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    f, m, w, mask, h = thick_case(seed, k, base)
    t = time.time()
    r = priorreg.register(f, m, spacing=h, warn=False)
    print(json.dumps(dict(seed=seed, k=k, base=base, spacing=h, shape=f.shape, none=epe(0 * w, w, mask),
                          epe=epe(r.field, w, mask), levels=[lv.shape for lv in r.history],
                          seconds=round(time.time() - t, 1), priorreg=priorreg.__file__)))
