"""2026-12-06: the nearly-aligned rule as it was ("default": the finest level 4x stiffer, starting from the coarser
levels' field) against restarting that level from the start field ("reset4": stiffness 4; "reset1": no stiffness), by
patching priorreg.deformable as it was at commit f38557b (nearly_aligned_regulariser; the restart is the rule since).
Rows: restart.jsonl (validation seeds 901-902, 911-912; the benchmark cases prostate3d-adc-hbv-1mm/-4mm as "case:NAME").
usage: restart_variants.py GENS DISPS SEEDS MODE"""
import json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # benchmarks/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, torch
torch.set_num_threads(1)
import priorreg, cases as C, run as R
from priorreg import deformable as D

mode = sys.argv[4]
state = {}
orig_nar = D.nearly_aligned_regulariser
orig_gf = D.gradient_flow

def nar(inp, pyr, u, index, reg):
    r, rec = orig_nar(inp, pyr, u, index, reg)
    state.clear()
    if rec is not None and rec["bending_factor"] != 1 and mode.startswith("reset"):
        f = float(mode[5:])
        r = priorreg.regularizer.Tikhonov(reg.weight, reg.spacing, reg.bending * f)
        state["u0"] = (torch.zeros_like(u) if inp.initial_field is None else
                       torch.as_tensor(inp.initial_field, dtype=u.dtype, device=u.device))
    return r, rec

def gf(data, reg, u, opts, index, sp, cb):
    if "u0" in state:
        u = state.pop("u0")
    return orig_gf(data, reg, u, opts, index, sp, cb)

D.nearly_aligned_regulariser, D.gradient_flow = nar, gf
from variants import gens  # the same generators (this folder)
for g in sys.argv[1].split(","):
    for a in [float(x) for x in sys.argv[2].split(",")]:
        for s in [int(x) for x in sys.argv[3].split(",")]:
            case = C.CASES[g[5:]]() if g.startswith("case:") else gens[g](s, a)
            kw = dict(R._setting(case))
            r = priorreg.register(case["fixed"], case["moving"], spacing=case.get("spacing"), warn=False, **kw)
            m = R.metrics(case, r.field)
            none = R.metrics(case, np.zeros_like(r.field))["epe_mean"]
            cd = getattr(r.history[-1], "coarse_displacement", None)
            print(json.dumps(dict(gen=g, disp=a, seed=s, v=mode, none=round(none, 4), epe=round(m["epe_mean"], 4),
                                  fold=m["fold_pct"], coarse=cd)), flush=True)
