"""Scratch: peers on the offset cases and their no-offset twins (run.metrics), one process, 2 threads."""
import json, os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import run as R
import numpy as np
import cases as C
import peers
out = sys.argv[1]; methods = sys.argv[2].split(","); names = sys.argv[3:]
avail = peers.available()
for name in names:
    case = C.CASES[name]()
    for meth in methods:
        fn = avail.get(meth, (None, "missing"))[0]
        if fn is None:
            print(f"[skip] {meth}: {avail.get(meth)}", flush=True); continue
        t = time.perf_counter()
        try:
            f = fn(case["fixed"], case["moving"], case["spacing"], verify=False)
        except Exception as e:
            print(f"{name} {meth} FAILED {e}", flush=True); continue
        sec = time.perf_counter() - t
        m = R.metrics(case, f)
        row = dict(case=name, method=meth, before=R.baseline(case).get("epe_mean"), epe=m.get("epe_mean"), p95=m.get("epe_p95"),
                   fold=m["fold_pct"], seconds=sec, load=os.getloadavg()[0])
        print(json.dumps(row), flush=True)
        open(out, "a").write(json.dumps(row) + "\n")
