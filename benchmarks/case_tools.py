"""The benchmark's base cases and the helpers every case module uses (issue 5); the registry of all
cases, ``CASES``, is in cases.py, above this module, cases_more.py and cases_linear.py.

Every case is a dict with
    fixed, moving        float arrays on one grid (moving is NOT deformed; fixed is)
    spacing              mm per array axis
    true_field           (d, *shape) mm, pull-back, priorreg convention: fixed voxel x
                         corresponds to moving point x + true_field(x) / spacing (voxels)
    mask                 bool array on the fixed grid where the error is measured
    labels_fixed/moving  optional int label maps (Dice); labels_moving lives on the moving grid
    prior_train          (list_of_fixed, list_of_moving) pre-aligned training pairs, or None
    prior_note           where the prior comes from (never the test pair)
    kind                 "2d-brain", "2d-real", "3d-brain" or "phantom"

Construction (exact ground truth): the moving image M is an undeformed modality-2 image,
the fixed image is modality 1 pulled back through a known smooth field v:
F(x) = T1(x + v(x)). Fixed voxel x therefore matches moving point x + v(x), so v is the
true displacement in the priorreg convention, with no inversion needed. Noise and bias
fields are applied AFTER the warp, independently per image.
"""
from __future__ import annotations

import glob
import os

import numpy as np
from scipy import ndimage as ndi

SHARED = os.environ.get("PRIORREG_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# --------------------------------------------------------------------------- helpers


def smooth_field(shape, sigma, max_disp, rng, mask=None):
    """Gaussian-smoothed white noise, one component per axis, scaled so max |v| in mask = max_disp (voxels)."""
    d = len(shape)
    v = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect") for _ in range(d)])
    mag = np.sqrt((v**2).sum(0))
    ref = mag[mask] if mask is not None else mag
    return v * (max_disp / ref.max())


def pull(img, v, order=1):
    """img(x + v(x)) with v in voxels (linear or nearest), mirror-free constant-0 border."""
    grid = np.indices(img.shape, dtype=np.float64) + v
    return ndi.map_coordinates(img, grid, order=order, mode="nearest")


def bias_field(shape, rng, strength=0.15):
    """Smooth multiplicative bias 1 +- strength (low-frequency random field)."""
    b = ndi.gaussian_filter(rng.standard_normal(shape), [s / 3.0 for s in shape], mode="wrap")
    b = b / (np.abs(b).max() + 1e-12)
    return np.exp(strength * b)


def rician(img, sigma, rng):
    """Rician noise: magnitude of a complex signal with Gaussian noise on both channels."""
    return np.sqrt((img + sigma * rng.standard_normal(img.shape)) ** 2 + (sigma * rng.standard_normal(img.shape)) ** 2)


def corrupt(img, rng, noise=0.02, bias=0.15):
    """Independent bias field and Rician noise (noise relative to the image's 99th percentile)."""
    scale = np.percentile(img[img > 0], 99) if np.any(img > 0) else 1.0
    return rician(img * bias_field(img.shape, rng, bias), noise * scale, rng)


# --------------------------------------------------------------------------- MNI152 anatomy


def _nilearn_dir():
    import nilearn

    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


_MNI = {}


def mni():
    """T1, GM, WM, CSF (float in [0,1]), brain mask and a tissue label map (1 CSF, 2 GM, 3 WM), 1 mm."""
    if _MNI:
        return _MNI
    import nibabel as nib

    d = _nilearn_dir()
    load = lambda k: np.asarray(  # noqa: E731
        nib.load(os.path.join(d, f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz")).dataobj, dtype=np.float64
    ) / 255.0
    t1, gm, wm = load("t1"), load("gm"), load("wm")
    brain = (gm + wm) > 0.3
    brain = ndi.binary_closing(brain, iterations=3)
    for ax in range(3):  # fill ventricles / sulci slice-wise as well
        brain = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(brain, ax, 0)], axis=0)
        brain = np.moveaxis(brain, 0, ax)
    brain = ndi.binary_fill_holes(brain)
    csf = np.clip(brain.astype(float) - gm - wm, 0, 1)
    lab = np.argmax(np.stack([np.full_like(gm, 0.25), csf, gm, wm]), axis=0).astype(np.int16)
    lab[~brain] = 0
    _MNI.update(t1=t1, gm=gm, wm=wm, csf=csf, brain=brain, labels=lab)
    return _MNI


def t2_like(gm, wm, csf):
    return 0.30 * wm + 0.60 * gm + 1.0 * csf


def pd_like(gm, wm, csf):
    """Non-monotone in T1: T1 orders CSF < GM < WM, this orders CSF < WM < GM."""
    return 0.70 * wm + 1.0 * gm + 0.45 * csf


CONTRASTS = {"t2": t2_like, "pd": pd_like}


def _slice(vol, plane, index):
    if plane == "axial":
        return vol[:, :, index]
    if plane == "sagittal":
        return vol[index, :, :]
    if plane == "coronal":
        return vol[:, index, :]
    raise ValueError(plane)


def brain_2d(plane="axial", contrast="t2", seed=0, max_disp=6.0, sigma=12.0, noise=0.02):
    """MNI slice T1 (fixed, deformed) -> T2-/PD-like (moving). Prior: coronal slices y=100,130."""
    M = mni()
    index = {"axial": 80, "sagittal": 70}[plane]
    rng = np.random.default_rng(seed)
    t1 = _slice(M["t1"], plane, index)
    gm, wm, csf = (_slice(M[k], plane, index) for k in ("gm", "wm", "csf"))
    brain = _slice(M["brain"], plane, index)
    lab = _slice(M["labels"], plane, index)
    mod2 = CONTRASTS[contrast](gm, wm, csf)
    v = smooth_field(t1.shape, sigma, max_disp, rng, brain)
    fixed = corrupt(pull(t1, v), rng, noise)
    moving = corrupt(mod2, rng, noise)
    mask = pull(brain.astype(float), v) > 0.5
    lab_f = pull(lab.astype(float), v, order=0).astype(np.int16)
    tf, tm = [], []
    for y in (100, 130):  # prior: coronal slices, fresh noise and bias, no deformation
        gm_c, wm_c, csf_c = (_slice(M[k], "coronal", y) for k in ("gm", "wm", "csf"))
        tf.append(corrupt(_slice(M["t1"], "coronal", y), rng, noise))
        tm.append(corrupt(CONTRASTS[contrast](gm_c, wm_c, csf_c), rng, noise))
    return dict(
        name=f"mni-{plane}-t1-{contrast}",
        kind="2d-brain",
        fixed=fixed,
        moving=moving,
        spacing=(1.0, 1.0),
        true_field=v,
        mask=mask,
        labels_fixed=lab_f,
        labels_moving=lab,
        label_names={1: "CSF", 2: "GM", 3: "WM"},
        prior_train=(tf, tm),
        prior_note="2 coronal MNI slices (y=100,130), new noise/bias, undeformed",
        desc=f"MNI152 {plane} slice {index}, T1 -> {contrast.upper()}-like, {t1.shape[0]}x{t1.shape[1]}, max|v|={max_disp} vox",
    )


# --------------------------------------------------------------------------- real 2D slices


def _nii2d(path):
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.float64)[:, :, 0]


def real_2d(which="brainweb", seed=0, max_disp=6.0, sigma=12.0, noise=0.02):
    """Real aligned pair: modality 1 deformed by a known field, both with new noise/bias.

    Prior: the same undeformed pair with NEW noise and bias (no other real pair of the same two
    modalities exists here), i.e. the prior knows this anatomy -- an optimistic (oracle-like) prior.
    """
    rng = np.random.default_rng(seed)
    if which == "brainweb":
        d = os.path.join(SHARED, "brainweb_itk_t1_pd_slice")
        a = _nii2d(os.path.join(d, "brainweb_t1_slice.nii.gz")).T
        b = _nii2d(os.path.join(d, "brainweb_pd_slice.nii.gz")).T
        names = ("T1", "PD")
    else:
        d = os.path.join(SHARED, "ixi_t2_pd_slice")
        a = _nii2d(os.path.join(d, "IXI040-Guys-0724_T2_slice69.nii.gz"))
        b = _nii2d(os.path.join(d, "IXI040-Guys-0724_PD_slice69.nii.gz"))
        names = ("T2", "PD")
    a = a / np.percentile(a, 99.5)
    b = b / np.percentile(b, 99.5)
    from priorreg.intensity import otsu_threshold

    fg = ndi.binary_fill_holes(ndi.binary_opening(a > otsu_threshold(a), iterations=2))
    v = smooth_field(a.shape, sigma, max_disp, rng, fg)
    fixed = corrupt(pull(a, v), rng, noise)
    moving = corrupt(b, rng, noise)
    mask = pull(fg.astype(float), v) > 0.5
    tf, tm = [corrupt(a, rng, noise)], [corrupt(b, rng, noise)]
    return dict(
        name=f"{which}-{names[0].lower()}-{names[1].lower()}",
        kind="2d-real",
        fixed=fixed,
        moving=moving,
        spacing=(1.0, 1.0),
        true_field=v,
        mask=mask,
        labels_fixed=None,
        labels_moving=None,
        prior_train=(tf, tm),
        prior_note="same slice pair, undeformed, new noise/bias (oracle-like: same anatomy)",
        desc=f"{which} real {names[0]} -> {names[1]}, {a.shape[0]}x{a.shape[1]}, max|v|={max_disp} vox",
    )


# --------------------------------------------------------------------------- 3D brain at 2 mm


def brain_3d(contrast="t2", seed=0, max_disp=4.0, sigma=12.0, noise=0.02):
    """MNI T1 -> T2-/PD-like at 2 mm, 91x109x91. Prior: undeformed copy with new noise/bias."""
    M = mni()
    rng = np.random.default_rng(seed)

    def down(vol, order=1):
        z = ndi.zoom(ndi.gaussian_filter(vol, 0.7) if order else vol, 0.5, order=order)  # 99x117x95
        return z[4:95, 4:113, 2:93]

    t1 = down(M["t1"])
    gm, wm, csf = down(M["gm"]), down(M["wm"]), down(M["csf"])
    brain = down(M["brain"].astype(float)) > 0.5
    lab = down(M["labels"].astype(float), order=0).astype(np.int16)
    mod2 = CONTRASTS[contrast](gm, wm, csf)
    v_vox = smooth_field(t1.shape, sigma, max_disp, rng, brain)
    fixed = corrupt(pull(t1, v_vox), rng, noise)
    moving = corrupt(mod2, rng, noise)
    mask = pull(brain.astype(float), v_vox) > 0.5
    lab_f = pull(lab.astype(float), v_vox, order=0).astype(np.int16)
    tf, tm = [corrupt(t1, rng, noise)], [corrupt(mod2, rng, noise)]
    return dict(
        name=f"mni3d-2mm-t1-{contrast}",
        kind="3d-brain",
        fixed=fixed,
        moving=moving,
        spacing=(2.0, 2.0, 2.0),
        true_field=v_vox * 2.0,
        mask=mask,
        labels_fixed=lab_f,
        labels_moving=lab,
        label_names={1: "CSF", 2: "GM", 3: "WM"},
        prior_train=(tf, tm),
        prior_note="undeformed copy of the same volume, new noise/bias",
        desc=f"MNI152 3D at 2 mm {t1.shape}, T1 -> {contrast.upper()}-like, max|v|={max_disp} vox",
    )


# --------------------------------------------------------------------------- circle phantom (docs/method.md §9.2)


def _disc(shape, c, r, blur=1.0):
    yy, xx = np.indices(shape, dtype=np.float64)
    d = (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) <= r * r).astype(float)
    return d


def phantom(n=256, layout="close"):
    """Fig. 1: f1 two discs (1 on 0), f2 one disc (0.2 on 1) overlapping both by the same area.

    Sizes at 256: small r=20, big r=36, moving r=29.1; scaled with n. Gap between the targets:
    2 px ("close") or 38 px ("gap") at 256. Priors: (f1, disc exactly on the small disc) and
    (f1, disc exactly on the big disc). No ground-truth field: Dice of the warped disc (w < 0.6).
    """
    s = n / 256.0
    rs, rb, rm = 20 * s, 36 * s, 29.1 * s
    gap = (2 if layout == "close" else 38) * s
    cy = n / 2.0
    xs = n / 2.0 - (rs + rb + gap) / 2.0  # small centre, big centre
    cs, cb = (cy, xs), (cy, xs + rs + rb + gap)
    small, big = _disc((n, n), cs, rs), _disc((n, n), cb, rb)
    # moving centre on the line: equal overlap areas (bisection)
    lo, hi = cs[1], cb[1]
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        m = _disc((n, n), (cy, mid), rm, 0)
        if (m * small).sum() > (m * big).sum():
            lo = mid
        else:
            hi = mid
    mov_disc = _disc((n, n), (cy, 0.5 * (lo + hi)), rm)
    bl = lambda a: ndi.gaussian_filter(a, 1.0)  # noqa: E731
    f1 = bl(np.maximum(small, big))
    f2 = bl(1.0 - 0.8 * mov_disc)
    pri_small = ([f1], [bl(1.0 - 0.8 * small)])
    pri_big = ([f1], [bl(1.0 - 0.8 * big)])
    return dict(
        name=f"phantom-{n}-{layout}",
        kind="phantom",
        fixed=f1,
        moving=f2,
        spacing=(1.0, 1.0),
        true_field=None,
        mask=None,
        small=small > 0.5,
        big=big > 0.5,
        moving_disc=mov_disc > 0.5,
        labels_fixed=None,
        labels_moving=None,
        prior_train={"small": pri_small, "big": pri_big},
        prior_note="small-disc prior: (f1, disc on small); big-disc prior: (f1, disc on big)",
        desc=f"circle phantom {n}x{n}, {layout} layout (gap {gap:.0f} px), r={rs:.0f}/{rb:.0f}, moving r={rm:.1f}",
    )
