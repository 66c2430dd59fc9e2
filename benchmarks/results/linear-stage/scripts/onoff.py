"""Scratch: run.py's 'priorreg alpha=1' row (the default preset, no prior) with linear on/off, per case.
CASE is a run.py case name or GENERATOR@SEED (a held-out draw: seeds.py generators, brain_3d, brats_3d).
Same settings (run._setting), same register call, same metrics (run.metrics); one process, 2 threads."""
import json, os, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import run as R  # sets thread env
import numpy as np
import torch
torch.set_num_threads(2)
import priorreg
import cases as C

out = sys.argv[1]
modes = sys.argv[2].split(",")       # e.g. affine,none
names = sys.argv[3:]
for name in names:
    try:
        g, _, sd = name.partition("@")
        if g == "brain_3d":
            case = C.brain_3d("t2", seed=int(sd))
        elif g == "brats_3d":
            case = __import__("cases_more").brats_3d(2, seed=int(sd))
        else:
            case = C.CASES[name]() if not sd else __import__("seeds").make_case(g, int(sd))
    except Exception as e:
        print(f"[skip] {name}: {e}", flush=True); continue
    base = R.baseline(case)
    for mode in modes:
        s = R._setting(case); s["linear"] = mode
        t = time.perf_counter()
        r = priorreg.register(case["fixed"], case["moving"], prior=None, alpha=1.0, spacing=case["spacing"], **s)
        sec = time.perf_counter() - t
        m = R.metrics(case, r.field)
        if case["true_field"] is not None:
            emm = np.sqrt(((r.field - case["true_field"]) ** 2).sum(0))[case["mask"]]
            m["epe_mm"] = float(emm.mean()); m["before_mm"] = float(np.sqrt((case["true_field"] ** 2).sum(0))[case["mask"]].mean())
        lin = None if r.linear is None else {k: r.linear.as_dict()[k] for k in ("kind", "rotation_degrees", "translation_mm", "scales", "shears", "mi_before", "mi_after", "notes")}
        row = dict(case=name, linear=mode, before=base.get("epe_mean"), epe=m.get("epe_mean"), p95=m.get("epe_p95"),
                   fold=m["fold_pct"], epe_mm=m.get("epe_mm"), before_mm=m.get("before_mm"), dice=m.get("dice_mean"), seconds=sec, load=os.getloadavg()[0], lin=lin)
        print(json.dumps(row), flush=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
