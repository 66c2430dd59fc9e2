import json, math
rows = [json.loads(l) for l in open(__import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), "rows.jsonl"))]
print(len(rows), "cases")
print("| case | dim | bins | right: given | swapped | ratio | margin | swapped prior: given | swapped | ratio | margin | MI(Q) | KL(Q||Q^T) | now warns (right / swapped) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    a, b = r["right"], r["swapped_prior"]
    print(f"| {r['case']} | {r['dim']} | {r['bins']} | {a['given']:.3f} | {a['swapped']:.3f} | {a['ratio']:.2f} | {a['margin']:+.2f} | "
          f"{b['given']:.3f} | {b['swapped']:.3f} | {b['ratio']:.2f} | {b['margin']:+.2f} | {a['prior_mi']:.3f} | {a['prior_asym_kl']:.3f} | "
          f"{'yes' if a['warns'] else 'no'} / {'yes' if b['warns'] else 'no'} |")
R_ = [r["right"] for r in rows]; S_ = [r["swapped_prior"] for r in rows]
name = {id(x): r["case"] for r in rows for x in (r["right"], r["swapped_prior"])}
print("\nright-order rows with swapped < given (the ones that could false-alarm), by ratio:")
for x in sorted([x for x in R_ if x["ratio"] < 1], key=lambda x: x["ratio"]):
    print(f"  {name[id(x)]:45s} ratio {x['ratio']:.3f} margin {x['margin']:.3f} margin/MI(Q) {x['margin']/x['prior_mi']:.2f} margin/asym {x['margin']/x['prior_asym_kl']:.2f}")
print("swapped-prior rows with swapped < given (detectable at all), by ratio:")
for x in sorted([x for x in S_ if x["ratio"] < 1], key=lambda x: x["ratio"]):
    print(f"  {name[id(x)]:45s} ratio {x['ratio']:.3f} margin {x['margin']:.3f} margin/MI(Q) {x['margin']/x['prior_mi']:.2f} margin/asym {x['margin']/x['prior_asym_kl']:.2f}")
print("swapped-prior rows with swapped >= given (undetectable by any rule that stays silent on the mirrored right-order row):",
      [name[id(x)] for x in S_ if x["ratio"] >= 1])

def tally(fire):
    fa = [name[id(x)] for x in R_ if fire(x)]
    caught = sum(fire(x) for x in S_)
    det = sum(x["ratio"] < 1 for x in S_)
    return fa, caught, det
rules = {
    "now: ratio<0.5 & margin>1.0": lambda x: x["ratio"] < 0.5 and x["margin"] > 1.0,
    "ratio<0.6 & margin>0.5": lambda x: x["ratio"] < 0.6 and x["margin"] > 0.5,
    "ratio<0.6 & margin>0.3": lambda x: x["ratio"] < 0.6 and x["margin"] > 0.3,
    "ratio<0.6 & margin>0.2": lambda x: x["ratio"] < 0.6 and x["margin"] > 0.2,
    "ratio<0.65 & margin>0.3": lambda x: x["ratio"] < 0.65 and x["margin"] > 0.3,
    "ratio<0.67 & margin>0.3": lambda x: x["ratio"] < 0.67 and x["margin"] > 0.3,
    "ratio<0.7 & margin>0.3": lambda x: x["ratio"] < 0.7 and x["margin"] > 0.3,
    "ratio<0.6 alone": lambda x: x["ratio"] < 0.6,
    "margin>0.6 alone": lambda x: x["margin"] > 0.6,
    "margin/MI(Q)>0.8": lambda x: x["margin"] / x["prior_mi"] > 0.8,
    "margin/MI(Q)>1.0": lambda x: x["margin"] / x["prior_mi"] > 1.0,
    "ratio<0.6 & margin/MI(Q)>0.5": lambda x: x["ratio"] < 0.6 and x["margin"] / x["prior_mi"] > 0.5,
}
print("\nrule: false alarms on right-order rows | swapped priors caught / detectable (swapped<given) / all")
for k, f in rules.items():
    fa, c, det = tally(f)
    print(f"  {k:32s} FA={len(fa)} {fa} | caught {c}/{det}/{len(S_)}")
# best (R, M) grid with zero false alarms
best = []
for Ri in range(30, 101):
    R = Ri / 100
    for Mi in range(0, 121, 5):
        M = Mi / 100
        fa, c, det = tally(lambda x: x["ratio"] < R and x["margin"] > M)
        if not fa:
            best.append((c, R, M))
mx = max(b[0] for b in best)
print(f"\nzero-false-alarm (R, M) catching the most ({mx}):", sorted({(R) for c, R, M in best if c == mx}), "M range",
      sorted({M for c, R, M in best if c == mx})[:3], "...", max(M for c, R, M in best if c == mx))
print("min right-order ratio:", min(x["ratio"] for x in R_), " max swapped ratio among detectable:",
      max(x["ratio"] for x in S_ if x["ratio"] < 1))
