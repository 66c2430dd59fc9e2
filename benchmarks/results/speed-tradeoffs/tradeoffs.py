"""Cheaper finest levels against accuracy, on validation seeds of the 3D 2 mm generators.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/results/speed-tradeoffs/tradeoffs.py SEEDS VARIANT...

VARIANT is "default" or keyword overrides ("mind_sample_fraction=0.25"). Prints one JSON row per
generator, seed and variant: mean EPE (voxels, in the brain mask) and register()'s seconds (2 threads,
in-process: start-up outside). Seeds 300-309 are validation seeds (benchmarks/README.md).
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import cases as C  # noqa: E402
import cases_more as CM  # noqa: E402
import priorreg  # noqa: E402

torch.set_num_threads(2)
GENERATORS = {"mni3d-2mm-t2": lambda s: C.brain_3d("t2", seed=s), "brats3d-2mm-flair-t1c": lambda s: CM.brats_3d(2, seed=s)}


def main(seeds, variants):
    for name, gen in GENERATORS.items():
        for seed in seeds:
            case = gen(seed)
            d = case["fixed"].ndim
            sp = case.get("spacing") or (1.0,) * d
            h = np.asarray(sp, dtype=float).reshape(d, *([1] * d))
            mask = case["mask"] if case.get("mask") is not None else np.ones(case["fixed"].shape, bool)
            for v in variants:
                kw = eval("dict(" + ("" if v == "default" else v) + ")")
                t = time.perf_counter()
                r = priorreg.register(case["fixed"], case["moving"], spacing=sp, warn=False, **kw)
                sec = time.perf_counter() - t
                epe = float(np.sqrt((((r.field - case["true_field"]) / h) ** 2).sum(0))[mask].mean())
                print(json.dumps(dict(generator=name, seed=seed, variant=v, epe=round(epe, 4), seconds=round(sec, 2),
                                      iterations=[x.iterations for x in r.history])), flush=True)


if __name__ == "__main__":
    a, b = sys.argv[1].split("-")
    main(range(int(a), int(b) + 1), sys.argv[2:])
