"""Rigid-truth BraTS FLAIR (fixed) / T1c (moving) at a given spacing: no reg, linear only, default."""
import sys, json, time, warnings
import numpy as np, nibabel as nib
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
import priorreg
warnings.simplefilter("ignore")
import os
D = os.path.join(os.environ.get("PRIORREG_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, "shared", "data")), "brats2013_deepmedic", "brats_2013_pat000%d_1", "")

def load(pat, name, h):
    a = nib.load(D % pat + name).get_fdata().astype(np.float32)
    if h == 1:
        return a
    return ndi.zoom(ndi.gaussian_filter(a, 0.4 * h), 1.0 / h, order=1)

def case(pat, h, seed, deg=6.0, shift=8.0):
    rng = np.random.default_rng(seed)
    f = load(pat, "Flair_subtrMeanDivStd.nii.gz", h)
    m = load(pat, "T1c_subtrMeanDivStd.nii.gz", h)
    brain = load(pat, "brainmask.nii.gz", h) > 0.5
    R = Rotation.from_rotvec(np.radians(deg) * (lambda v: v / np.linalg.norm(v))(rng.normal(size=3))).as_matrix()
    t = rng.normal(size=3); t *= shift / np.linalg.norm(t)
    shape = f.shape; sp = np.array([h] * 3, float)
    c = (np.array(shape) - 1) / 2 * sp
    x = np.indices(shape, dtype=np.float64).reshape(3, -1) * sp[:, None]
    # moving M(y) = T1c(psi(y)), psi(y) = c + R (y - c) + t
    psi = c[:, None] + R @ (x - c[:, None]) + t[:, None]
    bg = float(np.percentile(m, 1))
    mw = ndi.map_coordinates(m, psi / sp[:, None], order=1, cval=bg).reshape(shape).astype(np.float32)
    # truth: fixed x matches moving y with psi(y) = x: y = c + R^T (x - c - t)
    y = c[:, None] + R.T @ (x - c[:, None] - t[:, None])
    u = (y - x).reshape((3,) + shape)
    return f, mw, brain, u, sp

def epe(field, u, brain):
    return float(np.linalg.norm(field - u, axis=0)[brain].mean())

if __name__ == "__main__":
    h = float(sys.argv[1]); seeds = [int(s) for s in sys.argv[2].split(",")]
    variants = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {"default": {}}
    for pat in (5, 6):
        for seed in seeds:
            f, m, brain, u, sp = case(pat, h, seed)
            row = dict(pat=pat, h=h, seed=seed, noreg=epe(0 * u, u, brain))
            for name, kw in variants.items():
                t0 = time.time()
                r = priorreg.register(priorreg.Image(f, spacing=tuple(sp)), priorreg.Image(m, spacing=tuple(sp)), **kw)
                row[name] = round(epe(r.field, u, brain), 3)
                row[name + "_s"] = round(time.time() - t0, 1)

            print(json.dumps(row), flush=True)
