import json, collections, numpy as np
def load(f):
    d = collections.OrderedDict()
    for l in open(f):
        r = json.loads(l); d[(r["case"], r.get("linear", r.get("method")))] = r
    return d
rows = {}
for f in ("quick", "more", "prostate", "seeds", "seeds2"):
    rows.update(load(f"/tmp/bench-lin/{f}.jsonl"))
cases = list(dict.fromkeys(k[0] for k in rows))
print("| case | before | linear=affine (default) | linear=none | change |")
diffs = collections.defaultdict(list)
for c in cases:
    a, n = rows.get((c, "affine")), rows.get((c, "none"))
    if not (a and n): continue
    d = a["epe"] - n["epe"]
    print(f"| {c} | {a['before']:.2f} | {a['epe']:.3f} | {n['epe']:.3f} | {d:+.3f} |")
    g = "3d" if any(k in c for k in ("3d", "brain_3d", "brats_3d", "prostate")) else ("func" if any(k in c for k in ("pet", "spect")) else "2d")
    if "spine" in c: g = "spine"
    diffs[g].append(d)
for g, v in diffs.items():
    v = np.array(v); print(g, len(v), "mean %+.3f sd %.3f worse on %d" % (v.mean(), v.std(ddof=1) if len(v) > 1 else 0, (v > 0).sum()))
