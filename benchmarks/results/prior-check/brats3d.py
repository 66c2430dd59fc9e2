"""Cross-subject 3D check: prior from BraTS patient A (FLAIR fixed / T1c moving), test on patient B
with a known smooth warp. Usage: python3 brats3d.py TEST_PAT TRAIN_PAT SEED [SEED...] [--max MM] [--shift]"""
import os
SHARED = os.environ.get("PRIORREG_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, "shared", "data"))
import sys, json, time, argparse, warnings
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import priorreg
from common import smooth_field, pull, epe

D = os.path.join(SHARED, "brats2013_deepmedic/brats_2013_pat000{}_1/")
SP = (2.0, 2.0, 2.0)


def load(pat):
    out = {}
    for name, f in [("flair", "Flair_subtrMeanDivStd"), ("t1c", "T1c_subtrMeanDivStd"), ("mask", "brainmask")]:
        a = priorreg.read_image(D.format(pat) + f + ".nii.gz").array.astype(np.float32)
        a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2, : a.shape[2] // 2 * 2]
        a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((1, 3, 5))  # 2 mm block mean
        out[name] = a
    m = out["mask"] > 0.5
    idx = np.argwhere(m)
    lo, hi = np.maximum(idx.min(0) - 6, 0), np.minimum(idx.max(0) + 7, m.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return {k: v[sl] for k, v in out.items()}


ap = argparse.ArgumentParser()
ap.add_argument("test", type=int); ap.add_argument("train", type=int); ap.add_argument("seeds", type=int, nargs="+")
ap.add_argument("--max", type=float, default=4.0)
ap.add_argument("--shift", action="store_true", help="add a small translation (mm) to the truth")
ap.add_argument("--split", action="store_true", help="prior from two training pairs: the train patient's upper/lower halves")
ap.add_argument("--out", default=None)
a = ap.parse_args()

te, tr = load(a.test), load(a.train)
if a.split:
    z = tr["flair"].shape[0] // 2
    prior = priorreg.fit_prior([priorreg.Image(tr["flair"][:z], SP), priorreg.Image(tr["flair"][z:], SP)],
                               [priorreg.Image(tr["t1c"][:z], SP), priorreg.Image(tr["t1c"][z:], SP)])
else:
    prior = priorreg.fit_prior([priorreg.Image(tr["flair"], SP)], [priorreg.Image(tr["t1c"], SP)])
rows = []
for seed in a.seeds:
    rng = np.random.default_rng(1000 + seed)
    t = tuple(rng.uniform(-2, 2, 3)) if a.shift else None
    v = smooth_field(te["flair"].shape, SP, seed, a.max, 15.0, t)
    fixed = priorreg.Image(pull(te["flair"], v, SP), SP)
    moving = priorreg.Image(te["t1c"], SP)
    mask = pull(te["mask"], v, SP, order=0) > 0.5
    row = dict(test=a.test, train=a.train, seed=seed, shift=t, split=a.split, max_mm=a.max,
               epe_none=epe(np.zeros_like(v), v, mask))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.time(); r0 = priorreg.register(fixed, moving); row["t_noprior"] = time.time() - t0
        t0 = time.time(); r1 = priorreg.register(fixed, moving, prior=prior); row["t_prior"] = time.time() - t0
    row["epe_noprior"] = epe(r0.field, v, mask)
    row["epe_prior"] = epe(r1.field, v, mask)
    row["alphas"] = [round(p["alpha"], 3) for p in r1.prior_weights]
    row["warnings"] = sorted(set(str(x.message)[:120] for x in w))
    row["diff"] = row["epe_prior"] - row["epe_noprior"]
    print(json.dumps(row), flush=True)
    rows.append(row)
if a.out:
    json.dump(rows, open(a.out, "w"), indent=1)
