"""2D check: prior from other slices (or the other patient), test slice gets a known smooth warp.
  python3 slices2d.py brats --pat 6 --test 90 --train 60 70 [--train-pat 5] --seeds 0 1 2
  python3 slices2d.py prostate --test 9 --train 4 5 13 14 --seeds 0 1 2
fixed = FLAIR (brats) / ADC (prostate) pulled through v; moving = T1c / hbv unwarped; truth = v."""
import os
SHARED = os.environ.get("PRIORREG_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, "shared", "data"))
import sys, json, argparse, warnings
import numpy as np
from scipy import ndimage as ndi
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import priorreg
from common import smooth_field, pull, epe

ap = argparse.ArgumentParser()
ap.add_argument("data", choices=["brats", "prostate"])
ap.add_argument("--pat", type=int, default=6); ap.add_argument("--train-pat", type=int, default=None)
ap.add_argument("--test", type=int, required=True); ap.add_argument("--train", type=int, nargs="+", required=True)
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--max", type=float, default=4.0); ap.add_argument("--shift", action="store_true")
ap.add_argument("--out", default=None)
a = ap.parse_args()


def vol(path):
    return priorreg.read_image(path).array.astype(np.float32)


if a.data == "brats":
    D = os.path.join(SHARED, "brats2013_deepmedic/brats_2013_pat000{}_1/")
    def load(p):
        return (vol(D.format(p) + "Flair_subtrMeanDivStd.nii.gz"), vol(D.format(p) + "T1c_subtrMeanDivStd.nii.gz"),
                vol(D.format(p) + "brainmask.nii.gz"))
    F, M, K = load(a.pat)
    Ft, Mt, Kt = load(a.train_pat) if a.train_pat else (F, M, K)
    SP = (1.0, 1.0)
    # one in-plane crop: the union of the brain masks over all slices used (+ 8 voxel margin)
    idx = np.argwhere((K > 0.5).any(0) | (Kt > 0.5).any(0))
    lo, hi = np.maximum(idx.min(0) - 8, 0), np.minimum(idx.max(0) + 9, K.shape[1:])
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
else:
    D = os.path.join(SHARED, "prostatex_mpmri/ProstateX-0000/")
    F, M = vol(D + "adc.nii.gz"), vol(D + "hbv.nii.gz")
    # anatomy: body = smoothed hbv above its Otsu-like threshold (mean), filled
    sm = ndi.gaussian_filter(M, (0, 2, 2))
    K = np.stack([ndi.binary_fill_holes(s > s.mean()) for s in sm]).astype(np.float32)
    Ft, Mt, Kt = F, M, K
    SP = (2.0, 2.0)
    crop = (slice(None), slice(None))

tf = [priorreg.Image(Ft[z][crop], SP) for z in a.train]
tm = [priorreg.Image(Mt[z][crop], SP) for z in a.train]
with warnings.catch_warnings(record=True) as wtrain:
    warnings.simplefilter("always")
    prior = priorreg.fit_prior(tf, tm)
f0, m0, k0 = F[a.test][crop], M[a.test][crop], K[a.test][crop]
rows = []
for seed in a.seeds:
    rng = np.random.default_rng(1000 + seed)
    t = tuple(rng.uniform(-2, 2, 2)) if a.shift else None
    v = smooth_field(f0.shape, SP, seed, a.max, 15.0, t)
    fixed = priorreg.Image(pull(f0, v, SP), SP)
    moving = priorreg.Image(m0, SP)
    mask = pull(k0, v, SP, order=0) > 0.5
    row = dict(data=a.data, pat=a.pat, train_pat=a.train_pat, test=a.test, train=a.train, seed=seed, shift=t,
               max_mm=a.max, epe_none=epe(np.zeros_like(v), v, mask))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r0 = priorreg.register(fixed, moving)
        r1 = priorreg.register(fixed, moving, prior=prior)
    row["epe_noprior"] = epe(r0.field, v, mask); row["epe_prior"] = epe(r1.field, v, mask)
    row["alphas"] = [round(p["alpha"], 3) for p in r1.prior_weights]
    row["diff"] = row["epe_prior"] - row["epe_noprior"]
    row["warnings"] = sorted(set(str(x.message)[:100] for x in list(w) + list(wtrain)))
    print(json.dumps(row), flush=True)
    rows.append(row)
if a.out:
    json.dump(rows, open(a.out, "w"), indent=1)
