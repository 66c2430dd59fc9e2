"""Print the README's compact table (mean EPE / wall time per case and method) from a results.json.

    python3 benchmarks/readme_table.py benchmarks/results/results.json
"""
import json
import sys

COLS = [("no registration", "before"), ("priorreg alpha=1", "priorreg a=1"), ("priorreg alpha=0.4", "a=0.4"),
        ("priorreg alpha=0", "a=0"), ("priorreg alpha=0.4 cKL", "a=0.4 cKL"), ("priorreg alpha=0.4 CE", "a=0.4 CE"),
        ("priorreg alpha=0.4 CE, MI at finest", "a=0.4 CE, MI at finest"), ("simpleitk-bspline", "SimpleITK"),
        ("elastix-bspline", "elastix"), ("ants-syn", "ANTs SyN"), ("convexadam", "ConvexAdam")]


def cell(r, best):
    if r is None:
        return "-"
    if "error" in r:
        return "stopped" if "Terminated" in r["error"] or "timed out" in r["error"] or "terminated" in r["error"] else "failed"
    if "epe_mean" not in r:
        return "-"
    e = f"{r['epe_mean']:.2f}"
    if r["method"] == "no registration":
        return e
    if r["fold_pct"] > 0:
        e += f" ({r['fold_pct']:.1f}% fold)"
    c = f"{e} / {r['seconds']:.1f}s"
    return f"**{c}**" if abs(r["epe_mean"] - best) < 1e-12 else c


def main(path):
    rows = json.load(open(path))["rows"]
    cases = []
    for r in rows:
        if r["case"] not in cases and not r["case"].startswith("phantom") and r["case"] != "petct-real":
            cases.append(r["case"])
    print("| case | " + " | ".join(c[1] for c in COLS) + " |")
    print("|" + "---|" * (len(COLS) + 1))
    for c in cases:
        rr = {r["method"]: r for r in rows if r["case"] == c}
        best = min(r["epe_mean"] for m, r in rr.items() if m != "no registration" and "epe_mean" in r)
        print(f"| {c} | " + " | ".join(cell(rr.get(m), best) for m, _ in COLS) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
