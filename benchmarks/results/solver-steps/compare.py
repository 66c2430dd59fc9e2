import json, glob, statistics as st
rows=[json.loads(l) for f in glob.glob("benchmarks/results/solver-steps/rows.jsonl") for l in open(f) if l.startswith("{")]
d={}
for r in rows: d.setdefault((r["gen"],r["seed"]),{})[r["tag"]]=r
by={}
for k,v in sorted(d.items()):
    if "old" in v and "new" in v:
        by.setdefault(k[0],[]).append((v["new"]["epe"]-v["old"]["epe"], v["old"]["s"], v["new"]["s"], v["old"]["epe"]))
for g,l in by.items():
    diffs=[x[0] for x in l]
    print(f"{g:25s} n={len(l)} old {st.mean(x[3] for x in l):.4f} diff mean {st.mean(diffs):+.4f} worst {max(diffs):+.4f} best {min(diffs):+.4f}  time old {sum(x[1] for x in l):.1f} new {sum(x[2] for x in l):.1f}")
