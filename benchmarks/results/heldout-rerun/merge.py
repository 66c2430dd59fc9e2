"""The held-out headline table with priorreg's rows re-run on later code (2026-12-06, 11:10 UTC; before that 2026-12-05,
05:41 UTC, in git history) and the peers' rows of
the first run (benchmarks/results/heldout/: the peers' code did not change).

    python3 benchmarks/results/heldout-rerun/merge.py   # reads heldout/ and heldout-rerun/{2d,3d,functional}

Prints one row per generator as in benchmarks/README.md's held-out table: mean EPE (voxels) over the draws,
and [k/n]: on k of n draws priorreg's default was better than that column (for "default + prior": than the
prior row), with the worst folding where it is above 0.
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIRST = os.path.join(HERE, "..", "heldout")
PEERS = ["elastix-bspline", "simpleitk-bspline", "ants-syn", "niftyreg-f3d", "greedy-nmi", "convexadam"]


def main():
    for part in ("2d", "3d", "functional"):
        old = json.load(open(os.path.join(FIRST, part, "seeds.json")))["results"]
        new_path = os.path.join(HERE, part, "seeds.json")
        if not os.path.exists(new_path):
            continue
        new = json.load(open(new_path))["results"]
        for gen, rows in new.items():
            ours = {r["seed"]: r["epe_mean"] for r in rows["priorreg"]}
            cells = [f"{np.mean(list(ours.values())):.2f}"]
            was = {r["seed"]: r["epe_mean"] for r in old[gen]["priorreg"]}
            prior = rows.get("priorreg default + prior")
            if prior:
                p = {r["seed"]: r["epe_mean"] for r in prior}
                cells.append(f"{np.mean(list(p.values())):.2f} [{sum(ours[s] < p[s] for s in p)}/{len(p)}]")
            else:
                cells.append("-")
            for peer in PEERS:
                rs = old[gen].get(peer)
                if not rs:
                    cells.append("-")
                    continue
                e = {r["seed"]: r["epe_mean"] for r in rs}
                fold = max(r["fold_pct"] for r in rs)
                f = f" (fold {fold:.2f} %)" if fold > 0 else ""
                cells.append(f"{np.mean(list(e.values())):.2f}{f} [{sum(ours[s] < e[s] for s in e)}/{len(e)}]")
            shift = max(abs(ours[s] - was[s]) for s in ours)
            print(f"| {gen} ({len(ours)}) | " + " | ".join(cells) + f" |   (largest change per draw vs the first run: {shift:.3f})")


if __name__ == "__main__":
    main()
