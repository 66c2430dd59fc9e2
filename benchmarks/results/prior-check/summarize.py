import os
SHARED = os.environ.get("PRIORREG_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, "shared", "data"))
import json, glob
for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "res*.json"))):
    rows = json.load(open(f))
    print(f"## {f.split('/')[-1]}")
    print("seed | EPE none | no prior | prior auto | diff | alphas")
    for r in rows:
        print(f"{r['seed']} | {r['epe_none']:.3f} | {r['epe_noprior']:.4f} | {r['epe_prior']:.4f} | {r['diff']:+.4f} | {r['alphas']}")
    d = [r['diff'] for r in rows]
    print(f"worst {max(d):+.4f}, mean {sum(d)/len(d):+.4f}, worse on {sum(x > 1e-3 for x in d)}/{len(d)}\n")
