"""More benchmark cases (issue 5): PET/CT and SPECT/CT (real and simulated), BraTS FLAIR -> T1c in 3D,
spinal cord T1w -> T2w in 3D. Same dict contract as ``cases.py`` (see its docstring), plus:

    kind     "real-unaligned"    real misaligned pair, no ground truth (true_field None): figures only
             "2d-real-selfprior" real pair aligned once by us, then deformed by a known field
             "sim-functional"    SIMULATED CT-like + PET-/SPECT-like pair from tissue classes
             "3d-real"           real aligned 3D pair deformed by a known field
    view     optional (axis, index, orient) of the slice the figures show: axis/index None in 2D;
             orient "" (as stored), "T" (transposed) or "Tud" (transposed, rows flipped), so that
             the figure shows anterior/superior up (see ``view_slice``)

Ground truth where the MOVING image is deformed (PET/SPECT cases, "the PET is deformed by a
known field"): the moving image is M(y) = P(y + w(y)) for a known smooth w. Fixed voxel x then
matches moving point y = x + u(x) with y + w(y) = x, i.e. u(x) = -w(x + u(x)); u is solved by
fixed-point iteration to < 1e-5 voxel (``invert_field``). Where the FIXED image is deformed (BraTS,
spinal cord) the construction of cases.py is used: F(x) = A(x + v(x)), so v is the truth as is.

Data come from ../shared/data (or $PRIORREG_SHARED_DATA) and are read in place, never copied;
a missing folder raises :class:`DataNotFound`, which run.py turns into a skipped case.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage as ndi

HERE = os.path.dirname(os.path.abspath(__file__))
PETCT_ALIGNMENT = os.path.join(HERE, "data", "petct_alignment.npz")
# FAIR's setup2DPETCTData.m gives both images the domain omega = [0,50]x[0,50]; we read it as cm,
# so a CT pixel is 500/140 mm (the thorax then measures ~32 cm antero-posterior, plausible).
PETCT_SPACING = 500.0 / 140.0


class DataNotFound(FileNotFoundError):
    """A case's input data are not where they were looked for."""


def shared_dir():
    """../shared/data next to the repository, or $PRIORREG_SHARED_DATA (read at call time)."""
    return os.environ.get("PRIORREG_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))


def _need(*parts):
    path = os.path.join(shared_dir(), *parts)
    if not os.path.exists(path):
        raise DataNotFound(f"data not found: {os.path.normpath(path)} (set PRIORREG_SHARED_DATA to the folder "
                           f"that holds {parts[0]}/)")
    return path


def view_slice(a, view=None):
    """The 2D slice of array `a` that figures show, oriented by the case's ``view`` (see above)."""
    axis, index, orient = view if view is not None else (None, None, "")
    if a.ndim == 3:
        a = np.take(a, a.shape[2] // 2 if axis is None else index, axis=2 if axis is None else axis)
    if orient in ("T", "Tud"):
        a = a.T
    if orient == "Tud":
        a = a[::-1]
    return a


def _c():
    """case_tools.py: the helpers (noise, warps, the MNI volume) every case module shares."""
    import case_tools

    return case_tools


# --------------------------------------------------------------------------- helpers


def invert_field(w, iters=200, tol=1e-6):
    """u with u(x) = -w(x + u(x)) (voxels), so that y = x + u(x) solves y + w(y) = x.

    Fixed-point iteration with linear interpolation of w; converges for smooth w with |grad w| < 1.
    Returns (u, max residual |x + u + w(x + u) - x| in voxels).
    """
    shape = w.shape[1:]
    grid = np.indices(shape, dtype=np.float64)
    u = -w.copy()
    for _ in range(iters):
        pos = grid + u
        wu = np.stack([ndi.map_coordinates(c, pos, order=1, mode="nearest") for c in w])
        new = -wu
        step = np.abs(new - u).max()
        u = new
        if step < tol:
            break
    pos = grid + u
    res = np.abs(u + np.stack([ndi.map_coordinates(c, pos, order=1, mode="nearest") for c in w])).max()
    return u, float(res)


def _rowfill(m):
    """Fill every row between its first and last True pixel (a body outline that the lungs touch)."""
    out = np.zeros_like(m, dtype=bool)
    for i in range(m.shape[0]):
        c = np.nonzero(m[i])[0]
        if c.size:
            out[i, c[0]:c[-1] + 1] = True
    return out


def _largest(m):
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = ndi.sum(m, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def _ct_noise(img, rng, noise=0.02):
    """CT-like: additive Gaussian noise (noise x the 99th percentile), no bias field."""
    return img + noise * np.percentile(img, 99) * rng.standard_normal(img.shape)


def _poisson(img, rng, counts):
    """Poisson-like noise: counts at the 99th percentile of the positive part."""
    img = np.clip(img, 0, None)
    p = np.percentile(img[img > 0], 99) if np.any(img > 0) else 1.0
    scale = counts / p
    return rng.poisson(img * scale) / scale


# "Another scanner" for the functional image of the test pair (the intensity-robustness target of
# the project's benchmark brief, ../shared/BENCHMARKS.md: "a prior still helps when the test image's intensity scale differs from training (gain
# 0.8, offset, different scanner)"). The prior is trained on the first scanner; the test image gets a
# wider PSF, fewer counts and this intensity response (gain, offset, a mild non-linear curve): the
# percentile normalisation absorbs gain and offset, not the curve, the blur or the noise.
RESCAN = dict(extra_fwhm_mm=7.0, counts_factor=2 / 3, gain=0.8, offset=0.1, gamma=0.8)


def rescan_response(img, gain=RESCAN["gain"], offset=RESCAN["offset"], gamma=RESCAN["gamma"]):
    """y = p * (gain * (x / p)^gamma + offset), x clipped at 0 (counts are never negative), p = its 99th
    percentile above 0 (1 for an all-zero image)."""
    x = np.clip(img, 0, None)
    p = np.percentile(x[x > 0], 99) if np.any(x > 0) else 1.0
    return p * (gain * (x / p) ** gamma + offset)


def _block_mean(a, f):
    """Mean over f x f (x f) blocks; the array is edge-padded to a multiple of f."""
    pad = [(0, (-n) % f) for n in a.shape]
    a = np.pad(a, pad, mode="edge")
    sh = []
    for n in a.shape:
        sh += [n // f, f]
    return a.reshape(sh).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def _upsample(a, f, shape):
    """Linear interpolation of a coarse (block) grid back onto the fine grid (cell centres aligned)."""
    grid = np.meshgrid(*[(np.arange(n) + 0.5) / f - 0.5 for n in shape], indexing="ij")
    return ndi.map_coordinates(a, grid, order=1, mode="nearest")


def functional_image(uptake, spacing, fwhm_mm, factor, counts, rng):
    """PET/SPECT-like image of an uptake map: Gaussian PSF (FWHM in mm), detector grid `factor`
    times coarser than the CT grid (block mean), Poisson counts (`counts` at the 99th percentile
    of a detector pixel), interpolated back onto the CT grid (so its noise is correlated)."""
    sig = [fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / s for s in spacing]
    blurred = ndi.gaussian_filter(uptake, sig, mode="constant")
    coarse = _block_mean(blurred, factor) if factor > 1 else blurred
    noisy = _poisson(coarse, rng, counts)
    return _upsample(noisy, factor, uptake.shape) if factor > 1 else noisy


# --------------------------------------------------------------------------- PET/CT thorax slice (FAIR)


def petct_raw():
    """CT (140x140) and PET stretched onto the CT field of view (151 rows -> 140), both / 255."""
    from PIL import Image as PILImage

    d = _need("fair_petct_thorax_slice")
    ct = np.asarray(PILImage.open(os.path.join(d, "PET-CT-CT.jpg")).convert("L"), dtype=np.float64)
    pet = np.asarray(PILImage.open(os.path.join(d, "PET-CT-PET.jpg")).convert("L"), dtype=np.float64)
    n = ct.shape[0]
    rows = (np.arange(n) + 0.5) * pet.shape[0] / n - 0.5  # same field of view, pixel centres
    rr, cc = np.meshgrid(rows, np.arange(ct.shape[1], dtype=np.float64), indexing="ij")
    pet = ndi.map_coordinates(pet, [rr, cc], order=1, mode="nearest")
    return ct / 255.0, pet / 255.0


def ct_body(ct):
    """Body outline of the CT slice: threshold 20/255, opened, row-wise filled (lungs included)."""
    return _rowfill(ndi.binary_opening(ct > 20 / 255.0, iterations=1))


def align_petct(regularization=3.0):
    """Align the real PET onto the CT ONCE (the paper's SPECT/CT protocol): SimpleITK affine with
    Mattes MI (32 bins, 3 levels), then priorreg MI (alpha = 1) non-rigid from that start.
    Returns the displacement (2, 140, 140) in mm, pull-back, and a note. Run by
    ``python3 benchmarks/cases_more.py --make-petct-alignment``; the cases read the stored field,
    so later engine changes do not change the benchmark."""
    import SimpleITK as sitk

    import priorreg

    ct, pet = petct_raw()
    h = PETCT_SPACING

    def im(a):
        x = sitk.GetImageFromArray(a.astype(np.float32))
        x.SetSpacing((h, h))
        return x

    F, M = im(ct), im(pet)
    tx0 = sitk.CenteredTransformInitializer(F, M, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(32)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-4, 500)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetShrinkFactorsPerLevel([4, 2, 1])
    R.SetSmoothingSigmasPerLevel([2, 1, 0])
    R.SetInitialTransform(tx0, inPlace=False)
    out = R.Execute(F, M)
    df = sitk.TransformToDisplacementFieldFilter()
    df.SetReferenceImage(F)
    df.SetOutputPixelType(sitk.sitkVectorFloat64)
    disp = sitk.GetArrayFromImage(df.Execute(out))
    aff = np.stack([disp[..., 1], disp[..., 0]])  # ITK (x, y) -> array axes (row, col)
    res = priorreg.register(ct, pet, spacing=(h, h), alpha=1.0, initial_field=aff, regularization=regularization)
    note = (f"SimpleITK {sitk.Version.VersionString()} affine (Mattes MI 32 bins, shrink 4/2/1) "
            f"{[round(float(q), 4) for q in out.GetNthTransform(0).GetParameters()]}, then priorreg MI alpha=1, "
            f"regularization={regularization}, other options default")
    return res.field, note


def petct_aligned():
    """CT, the PET aligned onto it by the stored alignment, the CT body mask and the aligned PET's
    field-of-view mask."""
    ct, pet = petct_raw()
    if not os.path.exists(PETCT_ALIGNMENT):
        raise DataNotFound(f"data not found: {PETCT_ALIGNMENT} (make it with "
                           "python3 benchmarks/cases_more.py --make-petct-alignment)")
    field = np.load(PETCT_ALIGNMENT)["field_mm"].astype(np.float64)
    pos = np.indices(ct.shape, dtype=np.float64) + field / PETCT_SPACING
    peta = ndi.map_coordinates(pet, pos, order=1, mode="constant", cval=0.0)
    fov = ndi.map_coordinates(np.ones_like(pet), pos, order=1, mode="constant", cval=0.0) > 0.99
    return ct, peta, ct_body(ct), fov


def petct_real():
    """The real misaligned PET/CT slice: CT fixed, PET moving; no ground truth."""
    rng = np.random.default_rng(20)
    ct, pet = petct_raw()
    ct_a, peta, body, fov = petct_aligned()
    h = PETCT_SPACING
    return dict(
        name="petct-real",
        kind="real-unaligned",
        fixed=ct,
        moving=pet,
        spacing=(h, h),
        true_field=None,
        mask=body,
        labels_fixed=None,
        labels_moving=None,
        prior_train=([_ct_noise(ct_a, rng)], [_poisson(peta, rng, 200)]),
        prior_note=("THE SAME SLICE PAIR after our own affine + MI alignment (benchmarks/data/petct_alignment.npz), "
                    "new noise: there is no other real PET/CT pair here, so the prior knows this anatomy and "
                    "the alignment we chose; no ground truth, overlays only"),
        desc=(f"real PET/CT thorax slice (FAIR, Shekhar et al. 2005), separate scans, NOT aligned, no ground truth; "
              f"CT fixed 140x140, PET moving (151 rows stretched onto 140), {h:.2f} mm pixels"),
    )


def spect_petct_selfprior(seed=21, max_disp=5.0, sigma=10.0, rescan=False):
    """Paper's SPECT/CT protocol on the real PET/CT slice: the pair aligned once (stored field) is the
    truth; the PET is deformed by a known smooth field; prior from the aligned pair (same slice).
    ``rescan``: the test PET as from another scanner (``RESCAN``); the prior keeps the first one."""
    C = _c()
    rng = np.random.default_rng(seed)
    ct, peta, body, fov = petct_aligned()
    h = PETCT_SPACING
    w = C.smooth_field(ct.shape, sigma, max_disp, rng, body)  # voxels, on the moving grid
    u, res = invert_field(w)
    fixed = _ct_noise(ct, rng)
    moving = _poisson(C.pull(peta, w), rng, 200)  # drawn either way: rng then advances as without rescan
    if rescan:  # its own generator, so the prior's pair below is the one of rescan=False
        sig = RESCAN["extra_fwhm_mm"] / (2.0 * np.sqrt(2.0 * np.log(2.0))) / h
        r2 = np.random.default_rng((seed, 1))
        moving = rescan_response(_poisson(ndi.gaussian_filter(C.pull(peta, w), sig), r2, 200 * RESCAN["counts_factor"]))
    # moving point x + u(x) shows P(x): the error is measured in the CT body where the aligned PET has data
    mask = body & fov
    scanner = (f"; the test PET AS FROM ANOTHER SCANNER: {RESCAN['extra_fwhm_mm']:g} mm more blur, "
               f"{RESCAN['counts_factor']:.2g}x the counts, response {RESCAN['gain']:g} x^{RESCAN['gamma']:g} + "
               f"{RESCAN['offset']:g} (x / p99), the prior from the first") if rescan else ""
    return dict(
        name="spect-petct-selfprior" + ("-rescanned" if rescan else ""),
        kind="2d-real-selfprior",
        fixed=fixed,
        moving=moving,
        spacing=(h, h),
        true_field=u * h,
        inversion_residual_vox=res,
        mask=mask,
        labels_fixed=None,
        labels_moving=None,
        prior_train=([_ct_noise(ct, rng)], [_poisson(peta, rng, 200)]),
        prior_note=("THE SAME SLICE: the real PET/CT pair after our affine + MI alignment, undeformed, new noise "
                    "(as the paper did for SPECT/CT; oracle-like, the prior knows this anatomy)"),
        desc=(f"real PET/CT thorax slice aligned once by us (affine + MI) and taken as truth; PET deformed by a known "
              f"field (max {max_disp:g} px, sigma {sigma:g} px), Poisson-like noise on PET, Gaussian on CT; "
              f"140x140, {h:.2f} mm pixels{scanner}"),
    )


# --------------------------------------------------------------------------- simulated PET/CT, SPECT/CT

# Tissue classes, attenuation (CT-like, window 0..1) and uptake (functional) per class.
THORAX_NAMES = {1: "lung", 2: "fat", 3: "soft tissue", 4: "abdominal organs", 5: "bone", 6: "lesion"}
THORAX_CT = {0: 0.0, 1: 0.05, 2: 0.25, 3: 0.50, 4: 0.53, 5: 0.90, 6: 0.47}
THORAX_UPTAKE = {
    "pet": {0: 0.0, 1: 0.08, 2: 0.05, 3: 0.30, 4: 0.60, 5: 0.20, 6: 2.0},  # FDG-like: liver > muscle, hot lesions
    "spect": {0: 0.0, 1: 0.05, 2: 0.05, 3: 0.20, 4: 1.00, 5: 0.50, 6: 1.5},  # liver- and bone-avid tracer
}
HEAD_NAMES = {1: "CSF", 2: "GM", 3: "WM", 4: "lesion", 5: "skull", 6: "scalp"}
HEAD_CT = {"csf": 0.12, "gm": 0.50, "wm": 0.40, "lesion": 0.30, "skull": 1.0, "scalp": 0.40}
HEAD_UPTAKE = {
    "pet": {"csf": 0.05, "gm": 1.0, "wm": 0.30, "lesion": 2.0, "skull": 0.05, "scalp": 0.15},  # FDG
    "spect": {"csf": 0.10, "gm": 1.0, "wm": 0.45, "lesion": 1.6, "skull": 0.10, "scalp": 0.20},  # perfusion
}
# PSF FWHM (mm), detector grid factor (x the CT grid), counts at the 99th percentile of a detector pixel
IMAGING = {"pet": (6.0, 2, 100), "spect": (12.0, 2, 30)}
IMAGING_HEAD = {"pet": (6.0, 2, 100), "spect": (12.0, 4, 30)}


def thorax_classes(ct):
    """Class map of the real CT slice by thresholds (x 255): lung < 20 inside the body, fat 20-85,
    soft tissue 85-160, bone >= 160; soft tissue below the diaphragm (lowest lung row per column)
    and > 5 px inside the body = abdominal organs (liver region)."""
    v = ct * 255.0
    body = ct_body(ct)
    lab = np.zeros(ct.shape, np.int16)
    lung = _largest(ndi.binary_opening(body & (v < 20), iterations=1))
    lung = lung | (ndi.binary_closing(lung, iterations=2) & body & (v < 85))  # vessels/airways in the lung
    lab[body] = 3
    lab[body & (v >= 20) & (v < 85)] = 2
    lab[body & (v >= 160)] = 5
    lab[lung] = 1
    inner = ndi.distance_transform_edt(body) > 5
    rows = np.arange(ct.shape[0])[:, None]
    low = np.array([np.nonzero(lung[:, c])[0].max() if lung[:, c].any() else ct.shape[0] for c in range(ct.shape[1])])
    abd = (lab == 3) & inner & (rows > low[None, :])
    lab[abd] = 4
    return lab


def _add_lesions(lab, rng, where, radii, code, min_depth=4.0):
    """Discs of class `code`, centres drawn inside classes `where` (one per radius), min_depth px inside."""
    lab = lab.copy()
    idx = np.indices(lab.shape)
    for cls, r in zip(where, radii):
        ok = np.argwhere(ndi.distance_transform_edt(lab == cls) > r + min_depth)
        if len(ok) == 0:
            continue
        c = ok[rng.integers(len(ok))]
        disc = ((idx - c.reshape((-1,) + (1,) * lab.ndim)) ** 2).sum(0) <= r * r
        lab[disc] = code
    return lab


def _lut(lab, table):
    out = np.zeros(lab.shape)
    for k, val in table.items():
        out[lab == k] = val
    return out


def _thorax_pair(lab, modality, rng, h, rescan=False):
    ct_like = _ct_noise(ndi.gaussian_filter(_lut(lab, THORAX_CT), 0.5), rng)
    fwhm, factor, counts = IMAGING[modality]
    if rescan:  # another scanner: wider PSF, fewer counts, its own intensity response
        fwhm, counts = float(np.hypot(fwhm, RESCAN["extra_fwhm_mm"])), counts * RESCAN["counts_factor"]
    func = functional_image(_lut(lab, THORAX_UPTAKE[modality]), (h, h), fwhm, factor, counts, rng)
    return ct_like, (rescan_response(func) if rescan else func)


def _other_layout(lab, rng):
    """Another thorax class layout: lesions removed, mirrored antero-posteriorly, elastically deformed
    (max 10 px), new lesions elsewhere."""
    C = _c()
    base = np.where(lab == 6, 3, lab)[:, ::-1]
    v = C.smooth_field(base.shape, 15.0, 10.0, rng, base > 0)
    base = C.pull(base.astype(float), v, order=0).astype(np.int16)
    return _add_lesions(base, rng, (1, 4), (2.5, 3.0), 6)


def sim_thorax(modality="pet", seed=30, max_disp=5.0, sigma=10.0, rescan=False):
    """SIMULATED PET/CT or SPECT/CT thorax slice from the class map of the real CT slice.
    ``rescan``: the test pair's functional image as from another scanner (``RESCAN``), the prior's
    pairs from the first; the scene, the fixed image and the prior's pairs are those of ``rescan=False``
    (the rescanned image's noise comes from a generator of its own)."""
    C = _c()
    rng = np.random.default_rng(seed)
    ct, _ = petct_raw()
    h = PETCT_SPACING
    lab = _add_lesions(thorax_classes(ct), rng, (1, 4), (2.5, 3.0), 6)
    body = lab > 0
    w = C.smooth_field(lab.shape, sigma, max_disp, rng, body)
    u, res = invert_field(w)
    lab_m = C.pull(lab.astype(float), w, order=0).astype(np.int16)  # anatomy deformed, then imaged
    fixed, _ = _thorax_pair(lab, modality, rng, h)
    _, moving = _thorax_pair(lab_m, modality, rng, h)  # drawn either way: rng then advances as without rescan
    if rescan:  # its own generator, so the prior's pairs below are those of rescan=False
        _, moving = _thorax_pair(lab_m, modality, np.random.default_rng((seed, 1)), h, rescan)
    tf, tm = [], []
    for _ in range(2):
        f, m = _thorax_pair(_other_layout(lab, rng), modality, rng, h)
        tf.append(f)
        tm.append(m)
    fwhm, factor, counts = IMAGING[modality]
    name = {"pet": "PET", "spect": "SPECT"}[modality]
    return dict(
        name=f"sim-{modality}ct-thorax" + ("-rescanned" if rescan else ""),
        kind="sim-functional",
        fixed=fixed,
        moving=moving,
        spacing=(h, h),
        true_field=u * h,
        inversion_residual_vox=res,
        mask=body,
        labels_fixed=lab,
        labels_moving=lab_m,
        label_names=dict(THORAX_NAMES),
        prior_train=(tf, tm),
        prior_note=("SIMULATED: 2 other class layouts made from the same CT class map (mirrored antero-posteriorly, "
                    "elastically deformed by up to 10 px, lesions elsewhere), new noise; same class proportions, "
                    "never the test pair"),
        desc=(f"SIMULATION of {name}/CT: tissue classes thresholded from the real FAIR CT slice (lung, fat, soft tissue, "
              f"abdominal organs, bone) + 2 hot lesions; CT-like attenuation per class; {name}-like uptake per class, "
              f"PSF FWHM {fwhm:g} mm, detector pixels x{factor}, Poisson ({counts} counts at p99); {name} deformed "
              f"by a known field (max {max_disp:g} px); 140x140, {h:.2f} mm pixels"
              + (f"; the test {name} AS FROM ANOTHER SCANNER: PSF {np.hypot(fwhm, RESCAN['extra_fwhm_mm']):.1f} mm, "
                 f"{RESCAN['counts_factor']:.2g}x the counts, response {RESCAN['gain']:g} x^{RESCAN['gamma']:g} + "
                 f"{RESCAN['offset']:g} (x / p99), the prior's pairs from the first scanner" if rescan else "")),
    )


def _head_maps(gm, wm, csf, brain):
    """Tissue fractions of a 2D head slice: brain tissues from MNI, then a synthetic CSF rim (0-2 mm),
    skull (2-8 mm) and scalp (8-13 mm) outside the brain mask (the MNI template is skull-stripped)."""
    dist = ndi.distance_transform_edt(~brain)
    rim = (dist > 0) & (dist <= 2)
    maps = dict(csf=np.where(rim, 1.0, csf), gm=gm.copy(), wm=wm.copy(),
                skull=((dist > 2) & (dist <= 8)).astype(float), scalp=((dist > 8) & (dist <= 13)).astype(float),
                lesion=np.zeros_like(gm))
    return maps


def _head_lesions(maps, brain, rng, radii=(4.0, 6.0)):
    inner = np.argwhere(ndi.distance_transform_edt(brain) > 12)
    idx = np.indices(brain.shape)
    for r in radii:
        c = inner[rng.integers(len(inner))]
        disc = (((idx - c.reshape(-1, 1, 1)) ** 2).sum(0) <= r * r).astype(float)
        for k in ("csf", "gm", "wm"):
            maps[k] = maps[k] * (1 - disc)
        maps["lesion"] = np.maximum(maps["lesion"], disc)
    return maps


def _head_labels(maps):
    keys = ("csf", "gm", "wm", "lesion", "skull", "scalp")
    st = np.stack([np.full_like(maps["gm"], 0.25)] + [maps[k] for k in keys])
    return np.argmax(st, axis=0).astype(np.int16)


def _head_pair(maps, modality, rng):
    ct_like = _ct_noise(ndi.gaussian_filter(sum(HEAD_CT[k] * maps[k] for k in HEAD_CT), 0.5), rng)
    fwhm, factor, counts = IMAGING_HEAD[modality]
    up = sum(HEAD_UPTAKE[modality][k] * maps[k] for k in HEAD_CT)
    return ct_like, functional_image(up, (1.0, 1.0), fwhm, factor, counts, rng)


def sim_brain(modality="pet", seed=40, max_disp=6.0, sigma=12.0):
    """SIMULATED brain PET/CT or SPECT/CT: MNI axial slice z=80; prior from coronal slices y=100, 130."""
    C = _c()
    M = C.mni()
    rng = np.random.default_rng(seed)
    sl = lambda k, pl, i: C._slice(M[k], pl, i)  # noqa: E731
    maps = _head_lesions(_head_maps(sl("gm", "axial", 80), sl("wm", "axial", 80), sl("csf", "axial", 80),
                                    sl("brain", "axial", 80)), sl("brain", "axial", 80), rng)
    lab = _head_labels(maps)
    head = lab > 0
    w = C.smooth_field(lab.shape, sigma, max_disp, rng, head)
    u, res = invert_field(w)
    maps_m = {k: C.pull(v, w) for k, v in maps.items()}
    fixed, _ = _head_pair(maps, modality, rng)
    _, moving = _head_pair(maps_m, modality, rng)
    tf, tm = [], []
    for y in (100, 130):
        b = sl("brain", "coronal", y)
        mp = _head_lesions(_head_maps(sl("gm", "coronal", y), sl("wm", "coronal", y), sl("csf", "coronal", y), b), b, rng)
        f, m = _head_pair(mp, modality, rng)
        tf.append(f)
        tm.append(m)
    fwhm, factor, counts = IMAGING_HEAD[modality]
    name = {"pet": "PET", "spect": "SPECT"}[modality]
    return dict(
        name=f"sim-{modality}ct-brain",
        kind="sim-functional",
        fixed=fixed,
        moving=moving,
        spacing=(1.0, 1.0),
        true_field=u,
        inversion_residual_vox=res,
        mask=sl("brain", "axial", 80),
        view=(None, None, "Tud"),
        labels_fixed=lab,
        labels_moving=_head_labels(maps_m),
        label_names={k: HEAD_NAMES[k] for k in (1, 2, 3, 4, 5)},
        prior_train=(tf, tm),
        prior_note="SIMULATED: 2 coronal MNI slices (y=100,130) with their own lesions, new noise, undeformed",
        desc=(f"SIMULATION of brain {name}/CT: MNI152 axial slice 80 tissue maps + synthetic skull/scalp rings + 2 hot "
              f"lesions; CT-like attenuation per tissue, {name}-like uptake, PSF FWHM {fwhm:g} mm, detector pixels "
              f"{factor} mm, Poisson ({counts} counts at p99); {name} deformed by a known field (max {max_disp:g} px); "
              f"{lab.shape[0]}x{lab.shape[1]} at 1 mm"),
    )


# --------------------------------------------------------------------------- BraTS FLAIR -> T1c, 3D

BRATS_TEST, BRATS_PRIOR = "brats_2013_pat0005_1", "brats_2013_pat0006_1"
BRATS_NAMES = {1: "necrosis", 2: "oedema", 3: "non-enhancing", 4: "enhancing"}


def _brats(pid, step):
    """(T1c, FLAIR, labels, brain) of one patient, z-scores + 3 clipped at 0 (0 outside the brain),
    cropped to the brain bounding box + 3 voxels; step 2 = Gaussian (0.8 voxel) and every 2nd voxel."""
    import nibabel as nib

    d = _need("brats2013_deepmedic", pid)
    ld = lambda f: np.asarray(nib.load(os.path.join(d, f)).dataobj, dtype=np.float64)  # noqa: E731
    brain = ld("brainmask.nii.gz") > 0.5
    t1c = np.where(brain, np.clip(ld("T1c_subtrMeanDivStd.nii.gz") + 3.0, 0, None), 0.0)
    flair = np.where(brain, np.clip(ld("Flair_subtrMeanDivStd.nii.gz") + 3.0, 0, None), 0.0)
    lab = ld("OTMultiClass.nii.gz").round().astype(np.int16)
    idx = np.argwhere(brain)
    lo, hi = np.maximum(idx.min(0) - 3, 0), np.minimum(idx.max(0) + 4, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    t1c, flair, lab, brain = t1c[box], flair[box], lab[box], brain[box]
    if step == 2:
        sub = (slice(1, None, 2),) * 3
        t1c = ndi.gaussian_filter(t1c, 0.8)[sub]
        flair = ndi.gaussian_filter(flair, 0.8)[sub]
        lab = lab[sub]
        brain = ndi.gaussian_filter(brain.astype(float), 0.8)[sub] > 0.5
    return t1c, flair, lab, brain


def brats_3d(mm=2, seed=50, max_disp=None, sigma=None):
    """BraTS 2013 patient 5: T1c deformed (fixed) <- FLAIR (moving); prior: patient 6's aligned pair."""
    C = _c()
    rng = np.random.default_rng(seed)
    max_disp = max_disp or (4.0 if mm == 2 else 6.0)
    sigma = sigma or (12.0 if mm == 2 else 20.0)
    t1c, flair, lab, brain = _brats(BRATS_TEST, mm)
    v = C.smooth_field(t1c.shape, sigma, max_disp, rng, brain)
    fixed = C.corrupt(C.pull(t1c, v), rng)
    moving = C.corrupt(flair, rng)
    mask = C.pull(brain.astype(float), v) > 0.5
    lab_f = C.pull(lab.astype(float), v, order=0).astype(np.int16)
    p_t1c, p_flair, _, _ = _brats(BRATS_PRIOR, mm)
    z = int(np.argmax((lab_f > 0).sum((0, 1))))
    return dict(
        name=f"brats3d-{mm}mm-flair-t1c",
        kind="3d-real",
        fixed=fixed,
        moving=moving,
        spacing=(float(mm),) * 3,
        true_field=v * mm,
        mask=mask,
        labels_fixed=lab_f,
        labels_moving=lab,
        label_names=dict(BRATS_NAMES),
        view=(2, z, "T"),
        prior_train=([C.corrupt(p_t1c, rng)], [C.corrupt(p_flair, rng)]),
        prior_note="the OTHER patient (BraTS 2013 pat0006), its own aligned T1c/FLAIR, new noise/bias, undeformed",
        desc=(f"BraTS 2013 pat0005 (real glioma MR, CC BY-NC-SA 3.0, read from ../shared): T1c (fixed, deformed by a "
              f"known field, max {max_disp:g} vox, sigma {sigma:g} vox) <- FLAIR (moving); brain bounding box, "
              f"{t1c.shape[0]}x{t1c.shape[1]}x{t1c.shape[2]} at {mm} mm; tumour labels for Dice"),
    )


# --------------------------------------------------------------------------- spinal cord T1w -> T2w, 3D

SPINE_NAMES = {2: "cord C2", 3: "cord C3"}
# T2w -> T1w residual misalignment after the exact grid permutation (array axes of the T1w crop, voxels):
# SimpleITK translation, Mattes MI 32 bins, fixed mask = T2w cord dilated by 8 voxels (regular-step GD).
# The cord-mask centroids agree: T1w cord sits 0.8-1.7 voxels lower along axis 0 on every 5th slice.
SPINE_T2_SHIFT = (1.536, -0.532, 0.363)
SPINE_TEST_Z, SPINE_PRIOR_Z = slice(20, 55), slice(0, 20)


def spine_pair():
    """T1w crop (42x60x55, R/A/S, 1 mm) and the T2w on the same grid, pre-aligned, with the T2w cord
    level labels (2..5 = C2..C5) and the T2w cord mask on that grid."""
    import nibabel as nib

    t1 = nib.load(_need("sct_spine_errsm30", "t1", "t1w.nii.gz"))
    t2 = nib.load(_need("sct_spine_errsm30", "t2", "t2.nii.gz"))
    lvl = nib.load(_need("sct_spine_errsm30", "t2", "t2_seg-manual_labeled.nii.gz"))
    m = np.linalg.inv(t2.affine) @ t1.affine
    # T2 index = (68 - j, k - 2, i + 1) for T1 index (i, j, k): an exact permutation/flip/shift
    expect = np.array([[0, -1, 0, 68], [0, 0, 1, -2], [1, 0, 0, 1], [0, 0, 0, 1]], float)
    if not np.allclose(m, expect, atol=1e-3):
        raise ValueError(f"spine: unexpected T1w/T2w affines (T2 index from T1 index = {m.round(3).tolist()})")
    a1 = np.asarray(t1.dataobj, dtype=np.float64)[:, 9:69, 2:57]

    def on_t1(a):  # T2 array (P, S, R) -> T1 crop (R, A, S): [i, j', k'] = T2[59 - j', k', i + 1]
        return np.asarray(a)[::-1].transpose(2, 0, 1)[1:43]

    a2 = on_t1(np.asarray(t2.dataobj, dtype=np.float64))
    lv = on_t1(np.asarray(lvl.dataobj, dtype=np.float64)).round().astype(np.int16)
    shift = np.asarray(SPINE_T2_SHIFT).reshape(3, 1, 1, 1)
    pos = np.indices(a2.shape, dtype=np.float64) + shift
    a2 = ndi.map_coordinates(a2, pos, order=3, mode="nearest").clip(0, None)
    codes = [0, 2, 3, 4, 5]
    prob = np.stack([ndi.map_coordinates((lv == k).astype(float), pos, order=1, mode="nearest") for k in codes])
    lv = np.asarray(codes, np.int16)[np.argmax(prob, 0)]
    return a1 / np.percentile(a1, 99.5), a2 / np.percentile(a2, 99.5), lv


def spine_3d(seed=60, max_disp=4.0, sigma=8.0):
    """Spinal cord: T1w (fixed, deformed) <- T2w (moving), test slab z 20-54 (C2-C3), prior slab z 0-19."""
    C = _c()
    rng = np.random.default_rng(seed)
    t1, t2, lv = spine_pair()
    zt = SPINE_TEST_Z
    shape = t1[:, :, zt].shape
    cord = lv > 0
    roi = ndi.binary_dilation(cord, iterations=2)  # the cord and its CSF ring
    v = C.smooth_field(shape, sigma, max_disp, rng, roi[:, :, zt])  # max |v| in the cord + 2 voxels
    pos = np.indices(shape, dtype=np.float64) + v
    pos[2] += zt.start  # pull from the whole T1w crop (real data beyond the slab ends)
    fixed = C.corrupt(ndi.map_coordinates(t1, pos, order=1, mode="nearest"), rng)
    moving = C.corrupt(t2[:, :, zt], rng)
    mask = ndi.map_coordinates(roi.astype(float), pos, order=1, mode="nearest") > 0.5
    lab_f = ndi.map_coordinates(lv, pos, order=0, mode="nearest").astype(np.int16)
    zp = SPINE_PRIOR_Z
    return dict(
        name="spine3d-t1w-t2w",
        kind="3d-real",
        fixed=fixed,
        moving=moving,
        spacing=(1.0, 1.0, 1.0),
        true_field=v,
        mask=mask,
        labels_fixed=lab_f,
        labels_moving=lv[:, :, zt],
        label_names=dict(SPINE_NAMES),
        view=(0, int(np.round(np.argwhere(cord).mean(0)[0])), "Tud"),
        prior_train=([C.corrupt(t1[:, :, zp], rng)], [C.corrupt(t2[:, :, zp], rng)]),
        prior_note="the same subject's pre-aligned T1w/T2w in the slab BELOW the test slab (z 0-19, C3-C5), new noise/bias",
        desc=(f"SCT errsm_30 spinal cord (real MR, MIT): T1w (fixed, deformed, max {max_disp:g} vox, sigma {sigma:g}) <- "
              f"T2w (moving) resampled onto the T1w grid (exact axis permutation + MI translation "
              f"{SPINE_T2_SHIFT} vox), slab z 20-54 (C2-C3), {shape[0]}x{shape[1]}x{shape[2]} at 1 mm; EPE in the "
              f"cord + 2 voxels, Dice of the cord per vertebral level"),
    )


# --------------------------------------------------------------------------- registry (merged into cases.CASES)

MORE_CASES = {
    "petct-real": petct_real,
    "spect-petct-selfprior": spect_petct_selfprior,
    "sim-petct-thorax": lambda: sim_thorax("pet", seed=30),
    "sim-spectct-thorax": lambda: sim_thorax("spect", seed=31),
    "sim-spectct-thorax-rescanned": lambda: sim_thorax("spect", seed=31, rescan=True),
    "spect-petct-selfprior-rescanned": lambda: spect_petct_selfprior(rescan=True),
    "sim-petct-brain": lambda: sim_brain("pet", seed=40),
    "sim-spectct-brain": lambda: sim_brain("spect", seed=41),
    "brats3d-2mm-flair-t1c": lambda: brats_3d(2, seed=50),
    "brats3d-1mm-flair-t1c": lambda: brats_3d(1, seed=51),
    "spine3d-t1w-t2w": spine_3d,
}


if __name__ == "__main__":
    import argparse
    import sys

    sys.path.insert(0, HERE)
    p = argparse.ArgumentParser(description="helpers for the extra cases")
    p.add_argument("--make-petct-alignment", action="store_true",
                   help=f"align the real PET onto the CT once and store the field in {PETCT_ALIGNMENT}")
    a = p.parse_args()
    if a.make_petct_alignment:
        field, note = align_petct()
        os.makedirs(os.path.dirname(PETCT_ALIGNMENT), exist_ok=True)
        np.savez_compressed(PETCT_ALIGNMENT, field_mm=field.astype(np.float32), spacing_mm=PETCT_SPACING, note=note)
        print(f"wrote {PETCT_ALIGNMENT}: {note}")
