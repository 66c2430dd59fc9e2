"""Did the speed changes of 2026-12-05 (second session) move accuracy? priorreg's headline rows on
validation seeds (300-302 for the 2D and PET generators, 300-301 for the 3D ones; never the held-out
600s) with the code before them (base/: commit f862945) and after them (new/: commit bffa43d).

The changes compute the same quantities in another order (a strided blur, MIND's box as shifted sums, the
regulariser's Parseval weights once per level, the linear stage's sample mapping and binning once per level,
two threads from 50 000 voxels): values agree to float32 rounding, and a registration's path then parts
from the old one at some line-search decision. This table says how far the results move.

    python3 benchmarks/results/rounding-check/compare.py

Runs (each: `OMP_WAIT_POLICY=PASSIVE python3 benchmarks/seeds.py --headline --no-peers --seeds 300-302
[--generators ...] --out DIR`, base/ from a worktree of f862945 with PRIORREG_SHARED_DATA set; its
2db/, fnb/, 3db/ hold the generators that needed the shared data path).
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = {"2d": "2db", "functional": "fnb", "3d": "3db"}


def _load(tag, part):
    path = os.path.join(HERE, tag, part, "seeds.json")
    return json.load(open(path))["results"] if os.path.exists(path) else {}


def main():
    means = {}
    for part, extra in PARTS.items():
        base, new = _load("base", part), _load("new", part)
        for gen, rows in _load("base", extra).items():
            base.setdefault(gen, {}).update(rows)
        for gen in new:
            for row in new[gen]:
                if row not in base.get(gen, {}):
                    continue
                a = np.array([r["epe_mean"] for r in base[gen][row]])
                b = np.array([r["epe_mean"] for r in new[gen][row]])
                d = b - a
                if row == "priorreg":
                    means.setdefault(part, []).append((a.mean(), b.mean()))
                print(f"{gen:22s} {row:25s} EPE {a.mean():.3f} -> {b.mean():.3f}; per draw {d.min():+.3f} .. "
                      f"{d.max():+.3f}, better on {int((d < 0).sum())}, worse on {int((d > 0).sum())} of {len(d)}")
    for part, pairs in means.items():
        a, b = np.mean(pairs, axis=0)
        print(f"{part}: priorreg's mean over generators {a:.4f} -> {b:.4f}")


if __name__ == "__main__":
    main()
