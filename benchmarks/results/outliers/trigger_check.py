"""Does intensity.far_outlier_bounds clip any image of the benchmark? (2026-12-05, third new-user pass.)

For every case of cases.CASES (default seeds) and every generator of seeds.py at the held-out seeds
600-609, the fixed, moving and prior-training images: prints the ones with values more than one core span
(1st-99th percentile) beyond the core, which the outlier clip changes. None listed = every published figure
was computed on images the clip leaves untouched, bit for bit.

    python3 benchmarks/results/outliers/trigger_check.py [--seeds 600 601 ...]
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from priorreg.intensity import far_outlier_bounds  # noqa: E402


def _arrays(x, role):
    """Every 2D/3D array inside x (lists, tuples and dicts opened), with where it sits."""
    if isinstance(x, np.ndarray):
        if x.ndim in (2, 3) and np.issubdtype(x.dtype, np.number):
            yield role, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _arrays(v, f"{role}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        for k, v in enumerate(x):
            yield from _arrays(v, f"{role}[{k}]")


def images(case):
    for role in ("fixed", "moving", "prior_train"):
        yield from _arrays(case.get(role), role)


def check(name, case, hits):
    for role, a in images(case):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim in (2, 3) and far_outlier_bounds(a) is not None:
            hits.append(f"{name} {role}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="*", default=list(range(600, 610)))
    p.add_argument("--skip-cases", action="store_true")
    a = p.parse_args()
    import cases as C
    import seeds as S

    hits, n = [], 0
    if not a.skip_cases:
        for name, make in C.CASES.items():
            try:
                case = make()
            except C.DataNotFound as e:
                print(f"skip {name}: {e}")
                continue
            check(name, case, hits)
            n += 1
    for gen in S.ALL_GENERATORS:
        for seed in a.seeds:
            try:
                case = S.make_case(gen, seed)
            except C.DataNotFound as e:
                print(f"skip {gen}: {e}")
                break
            check(f"{gen} seed {seed}", case, hits)
            n += 1
    print(f"{n} cases checked; the outlier clip changes {len(hits)} image(s)" + (":" if hits else "."))
    for h in hits:
        print("  " + h)


if __name__ == "__main__":
    main()
