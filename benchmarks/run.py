"""Run priorreg and every available peer on the same cases, in one run.

    python3 benchmarks/run.py --out benchmarks/results [--quick] [--cases NAME ...] [--no-peers]

Writes results.md (table), results.json and PNG figures into --out. Each registration runs in a
fresh spawned process (one at a time), so wall time and peak memory (ru_maxrss of that process
= VmHWM of that process; growth = VmHWM minus RSS before the call) are per run. Every tool is limited to 2 threads.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_k] = "2"
# OMP_WAIT_POLICY is left as the user has it (OpenMP's default: workers spin briefly between
# parallel regions). PASSIVE made every small torch operation wake its threads through the
# kernel: a 2D priorreg run took 2.3 s instead of 0.8 s (ConvexAdam, also torch, paid the same).
# The price of the default: the benchmark must have the machine to itself (under CPU
# contention, spinning workers made a 0.7 s run take 70-100 s here); run.py warns when other
# processes keep a core busy.

import cases as C  # noqa: E402
import cases_more as CM  # noqa: E402

# One priorreg setting per dimension (chosen on tuning cases from the same generators with
# other seeds, never on the benchmark cases), and the presets' bending rule: in 2D it scales with the
# squared voxel size (100 mm^2 x h^2), in 3D it is 400 mm^2, less in a field of view under 100 mm
# (priorreg.deformable.bending_weight; README "Regulariser weights in physical terms").
# Regional MI (local_weight=1, local_regions="auto") and, in 3D, 300k histogram samples with an
# earlier stop were chosen on the tuning seeds (2D: axial/sagittal MNI, BrainWeb, IXI with seeds
# 101-106; 3D: MNI seed 107, BraTS seed 150, spinal cord seeds 160-161).
# The settings come from priorreg's named presets ("mr"; "functional" for the PET/SPECT-with-CT kinds
# below), never from dicts kept here: what the benchmark measures is what a user gets with --preset.
PER_RUN = ("alpha", "alpha_schedule", "prior_term")  # set per benchmark row


def preset_settings(name, ndim):
    """Preset ``name``'s options for ``ndim``-D cases, less the fields each row sets itself."""
    from priorreg.options import preset_options

    return {k: v for k, v in preset_options(name, ndim).as_dict().items() if k not in PER_RUN}


PRIORREG_SETTINGS = {"2d": preset_settings("mr", 2), "3d": preset_settings("mr", 3)}
# regularization_scaling="alpha" (levels with 0 < alpha < 1 only): the regulariser is multiplied by alpha,
# so alpha=0.4 adds the prior to the similarity-to-smoothness balance tuned at alpha=1 instead of
# weakening the similarity 2.5x against it. Tuning seeds, alpha=0.4 KL, EPE without -> with: 2D MR sum of
# six 3.41 -> 3.04 (sagittal T2 0.71 -> 0.65, BrainWeb 0.58 -> 0.55, IXI 0.60 -> 0.54; at alpha=1 the same
# 0.4x weights give 2.90 -> 3.13, so it is the balance, not a weaker regulariser, that helps); functional
# sum of nine 13.81 -> 13.09; MNI 107 0.263 -> 0.219, BraTS 150 0.386 -> 0.381, spinal cord 160/161
# 1.92/1.57 -> 1.68/1.23. With the cross-entropy term it hurt (2D MR 3.67 -> 4.09, functional 13.82 ->
# 14.13; with "mi-finest" 2.95 -> 3.08): CE pulls harder than KL (no entropy term), so the CE rows keep
# the paper's weighting (PRIOR_TERM_SETTINGS).
PRIOR_TERM_SETTINGS = {"ce": dict(regularization_scaling="none")}
# prior_intensity_fit="affine" (rows with alpha < 1 only): per level, fit a gain and offset per modality
# that bring the test pair's joint histogram onto the prior (priorreg.calibration). Tuning seeds, alpha
# = 0.4, EPE without -> with: MNI sagittal PD 1.65 -> 0.56, sagittal T2 0.68 -> 0.59, axial PD 0.66 ->
# 0.52 (seed 102: 0.58 -> 0.38), BraTS 150 0.43 -> 0.39, spinal cord 160 2.17 -> 1.92, BrainWeb 105
# 0.57 -> 0.58; IXI 106 and the SPECT-like seeds 121/132 unchanged (gain below the 0.1-nat threshold).
# The MIND-SSC term (mind_weight=10; 3 principal channels in 3D) was chosen on the same tuning
# seeds: 2D sum of five errors 3.14 -> 2.36 (weights 2 / 5 / 15 / 30 gave 2.78 / 2.44 / 2.48 / 3.01;
# tolerance 3e-4 -> 1e-3 costs 0.01 and halves the time); 3D MNI 0.269 -> 0.219, BraTS 0.411 -> 0.376,
# spinal cord 2.13 -> 1.62 and 1.45 -> 1.25 voxels. All 12 channels in 3D: no more accurate and 2x
# slower (each channel is one more image to interpolate at every iteration).
# 3D speed (MNI 3D at 2 mm took 5.2 s against the 5 s target): MIND on a third of the histogram
# samples (mind_sample_fraction) and tolerance 2e-3. Tuning seeds (EPE, s): MNI 107 0.219 5.0 -> 0.225
# 3.4, MNI 0.205 5.2 -> 0.212 3.8, BraTS 150 0.376 -> 0.378, spinal cord 160/161 1.62/1.25 -> 1.52/1.29;
# held-out spinal cord 300-305 mean 0.981 -> 0.986, MNI 301/302 0.249/0.227 -> 0.254/0.243 (5.8 -> 4.3 s).
# In 2D the thinner MIND samples cost accuracy (sum 2.36 -> 2.51) and no time: not used there.
# `--set 3d.force=warped` (a sub-run with one setting changed) reaches the spawned children
# through this environment variable.
for _k, _v in json.loads(os.environ.get("PRIORREG_BENCH_SET", "{}")).items():
    PRIORREG_SETTINGS[_k.split(".")[0]][_k.split(".")[1]] = _v
BENDING_PER_VOXEL2 = 100.0  # 2D: bending = 100 mm^2 x (mean spacing / 1 mm)^2 (the 2D presets' bending_scale="spacing")
ALPHAS = (1.0, 0.4, 0.0)
TERM_ALPHA = 0.4  # also run alpha=0.4 with the cross-entropy (prior_term="ce") and conditional KL ("ckl") terms
PHANTOM_REGIONS = 8  # regional-prior rows of the circle phantom: 8 x 8 blocks
PHANTOM_ITERATIONS = 1500  # ... and up to 1500 iterations per level (default 300)
DESCS = {}
SKIPPED = {}


# Regional MI needs both images to resolve anatomy inside every block. On the functional (PET/SPECT)
# tuning cases (thorax and brain simulations with seeds 130-141, the self-prior slice with seed 121)
# it made things worse (brain PET 1.32 -> 3.68 voxels), so the pairs of a functional image with CT
# keep the paper's global MI: one rule per modality pair, declared before the run.
FUNCTIONAL_KINDS = ("sim-functional", "2d-real-selfprior", "real-unaligned")
# Tried and not adopted: 5 levels, lambda 0.1, tolerance 1e-4 for the 2D MR pairs (tuning seeds: sum of
# five errors 3.12 -> 2.88; held-out seeds 300-309 with seeds.py: 0.658 -> 0.644, within the spread;
# on the functional tuning cases 15.8 -> 20.2, and in a benchmark run the alpha < 1 rows folded, up to
# 21 % at alpha=0 on axial PD).
# MIND-SSC (a local structure descriptor) does not survive the functional images' blur and noise
# either: on the same functional tuning cases 15.7 -> 20.5 (weight 10), 16.3 (weight 3).
# Compared with the "mr" preset itself, not PRIORREG_SETTINGS: a --set reaches the children before this line runs,
# and "2d.linear=none" then made the functional kinds put linear="affine" back (they differed from the changed value).
KIND_SETTINGS = {k: {n: v for n, v in preset_settings("functional", 2).items() if v != preset_settings("mr", 2)[n]}
                 for k in FUNCTIONAL_KINDS}  # the "functional" preset: the "mr" one without the local terms
# The functional tuning cases with the 2D tolerance 1e-3 instead of 3e-4: 15.7 -> 15.5.
# The circle phantom is the paper's experiment: its energy is the paper's (MI and/or the prior), and
# it keeps the tolerance (3e-4) it was decided with before the MIND term came.
KIND_SETTINGS["phantom"] = dict(mind_weight=0.0, tolerance=3e-4, prior_intensity_fit="none", regularization_scaling="none",
                                linear="none")  # the paper's experiment starts from the designed layout
# The phantom has no tuning seeds (a designed experiment); its pyramid scales with the image: coarsest
# level 64 px, i.e. 3 levels at 256 and 4 at 512 (the same scene at twice the resolution needs one more
# level to travel as far; with 3 levels at 512 the big-disc regional prior reached Dice 0.82, with 4
# 0.94). Fixed before the run, for both sizes and layouts.
PHANTOM_COARSEST = 64


def _bending_text() -> str:
    """How each dimension's bending weight is set in this run (a --set can change it)."""
    rule = {"spacing": "mm^2 x (mean spacing in mm)^2", "field_of_view": "mm^2, less in a field of view under 100 mm",
            "none": "mm^2"}
    return ", ".join(f"{d.upper()} {PRIORREG_SETTINGS[d]['bending']:g} {rule[PRIORREG_SETTINGS[d]['bending_scale']]}"
                     for d in ("2d", "3d"))


def _setting(case):
    s = dict(PRIORREG_SETTINGS["3d" if case["fixed"].ndim == 3 else "2d"])
    s.update(KIND_SETTINGS.get(case["kind"], {}))
    if case["kind"] == "phantom":
        s["levels"] = 1 + max(0, int(round(math.log2(min(case["fixed"].shape) / PHANTOM_COARSEST))))
    return s  # the bending weight: the presets' bending_scale (2D per voxel, 3D by field of view)


# --------------------------------------------------------------------------- one run (child process)


def _status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def case_prior(case, s, prior_key=None, regions=1):
    """The case's learned prior (its ``prior_train`` pairs, or the ``prior_key`` ones) with setting ``s``'s binning."""
    import priorreg

    tr = case["prior_train"][prior_key] if isinstance(case["prior_train"], dict) else case["prior_train"]
    return priorreg.fit_prior(tr[0], tr[1], bins=s["bins"], parzen_sigma=s["parzen_sigma"], levels=s["levels"],
                              regions=regions)


def _child(method, case, prior_key=None, alpha=1.0, prior_term="kl", alpha_schedule="constant", regions=1, extra=None):
    import torch

    torch.set_num_threads(2)
    # ru_maxrss survives fork+exec (it would report the parent's peak); VmHWM is per address space
    # and can be reset: clear_refs "5" sets it to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    out = {}
    if method == "priorreg":
        import priorreg

        s = _setting(case)
        s.update(PRIOR_TERM_SETTINGS.get(prior_term, {}))
        prior = None
        if alpha < 1 or prior_key is not None:
            prior = case_prior(case, s, prior_key, regions)
        t = time.perf_counter()
        r = priorreg.register(case["fixed"], case["moving"], prior=prior, alpha=alpha, spacing=case["spacing"],
                              prior_term=prior_term, alpha_schedule=alpha_schedule, **{**s, **(extra or {})})
        out["seconds"] = time.perf_counter() - t
        out["field"] = r.field
        out["iterations"] = [h.iterations for h in r.history]
    else:
        import peers

        fn = dict(peers.available())[method][0]
        t = time.perf_counter()
        field = fn(case["fixed"], case["moving"], case["spacing"], verify=False)
        out["seconds"] = time.perf_counter() - t
        out["field"] = field
        if case.get("verify", False):
            fn(case["fixed"], case["moving"], case["spacing"], verify=True)
    peak = _status_kb("VmHWM")
    out["peak_mb"] = peak / 1024.0  # whole process: interpreter + torch/tool + data + the run
    out["delta_mb"] = (peak - before) / 1024.0  # growth during the call
    return out


def in_fresh_process(fn, *args, timeout=900, **kw):
    """``fn(*args, **kw)`` in a freshly spawned process (its own imports, threads and peak memory)."""
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        return ex.submit(fn, *args, **kw).result(timeout=timeout)


def run_isolated(*args, timeout=900, **kw):
    return in_fresh_process(_child, *args, timeout=timeout, **kw)


# --------------------------------------------------------------------------- metrics


def jacobian_det(field, spacing):
    d = field.shape[0]
    J = np.zeros((d, d) + field.shape[1:])
    for i in range(d):
        for j in range(d):
            J[i, j] = np.gradient(field[i] / spacing[i], axis=j) + (i == j)
    if d == 2:
        return J[0, 0] * J[1, 1] - J[0, 1] * J[1, 0]
    return np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))


def warp_nearest(labels, field, spacing):
    from scipy import ndimage as ndi

    pos = np.indices(labels.shape, dtype=np.float64) + field / np.reshape(spacing, (-1,) + (1,) * labels.ndim)
    return ndi.map_coordinates(labels, pos, order=0, mode="nearest")


def warp_linear(img, field, spacing):
    from scipy import ndimage as ndi

    pos = np.indices(img.shape, dtype=np.float64) + field / np.reshape(spacing, (-1,) + (1,) * img.ndim)
    return ndi.map_coordinates(img, pos, order=1, mode="nearest")


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else float("nan")


def epe_map(case, field):
    """Endpoint error in voxels at every fixed voxel (true_field and field in mm)."""
    sp = np.asarray(case["spacing"], float)
    return np.sqrt((((field - case["true_field"]) / sp.reshape((-1,) + (1,) * len(sp))) ** 2).sum(0))


def _save(fig, ax, path):
    """Axes off, tight layout, write ``path`` and free the figure (every benchmark figure ends so)."""
    import matplotlib.pyplot as plt

    for a in np.ravel(ax):
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics(case, field):
    sp = np.asarray(case["spacing"], float)
    m = {}
    jac = jacobian_det(field, sp)
    m["fold_pct"] = float(100.0 * np.mean(jac <= 0))
    if case["true_field"] is not None:
        err = epe_map(case, field)[case["mask"]]
        m["epe_mean"] = float(err.mean())
        m["epe_p95"] = float(np.percentile(err, 95))
    if case.get("labels_fixed") is not None:
        w = warp_nearest(case["labels_moving"], field, sp)
        per = {name: dice(w == k, case["labels_fixed"] == k) for k, name in case["label_names"].items()}
        m["dice"] = per
        m["dice_mean"] = float(np.mean(list(per.values())))
    if case["kind"] == "phantom":
        w = warp_linear(case["moving"], field, sp) < 0.6
        m["dice_small"] = dice(w, case["small"])
        m["dice_big"] = dice(w, case["big"])
        m["dice_union"] = dice(w, case["small"] | case["big"])
        m["disc_px"] = int(w.sum())
    return m


def baseline(case):
    return metrics(case, np.zeros_like(case["true_field"]) if case["true_field"] is not None else
                   np.zeros((case["fixed"].ndim, *case["fixed"].shape)))


# --------------------------------------------------------------------------- figures


def fig_phantom(case, fields, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(fields) + 2
    fig, ax = plt.subplots(1, n, figsize=(1.9 * n, 2.2), dpi=70)
    ax[0].imshow(case["fixed"], cmap="gray"); ax[0].set_title("fixed f1", fontsize=7)  # noqa: E702
    ax[1].imshow(case["moving"], cmap="gray"); ax[1].set_title("moving f2", fontsize=7)  # noqa: E702
    for a, (name, f) in zip(ax[2:], fields.items()):
        w = warp_linear(case["moving"], f, np.asarray(case["spacing"]))
        rgb = np.stack([case["small"] | case["big"], w < 0.6, np.zeros_like(w, bool)], -1).astype(float) * 0.9
        a.imshow(rgb)
        a.set_title(name, fontsize=6)
    _save(fig, ax, path)


def fig_overlay(case, fields, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage as ndi

    sp = np.asarray(case["spacing"], float)
    fixed, moving = case["fixed"], case["moving"]
    sl = (lambda a: a[:, :, a.shape[2] // 2]) if fixed.ndim == 3 else (lambda a: a)
    n = len(fields) + 1
    fig, ax = plt.subplots(2, n, figsize=(1.9 * n, 4.0), dpi=70)
    edges = lambda a: ndi.morphological_gradient((a > 0.15 * a.max()).astype(np.uint8), size=2) > 0  # noqa: E731
    items = [("no registration", np.zeros((fixed.ndim, *fixed.shape)))] + list(fields.items())
    for j, (name, f) in enumerate(items):
        w = warp_linear(moving, f, sp)
        fs, ws = sl(fixed), sl(w)
        rgb = np.stack([fs / np.percentile(fs, 99.5), ws / np.percentile(ws, 99.5), np.zeros_like(fs)], -1).clip(0, 1)
        ax[0, j].imshow(rgb)
        ax[0, j].set_title(name, fontsize=6)
        if case["true_field"] is not None:
            e = epe_map(case, f)
            e = np.where(case["mask"], e, np.nan)
            ax[1, j].imshow(sl(e), vmin=0, vmax=3, cmap="magma")
            ax[1, j].set_title("EPE (0-3 vox)", fontsize=6)
    _save(fig, ax, path)


def _fig_items(case, fields):
    """("no registration", 0), ("truth", true field) where known, then the methods' fields."""
    zero = np.zeros((case["fixed"].ndim, *case["fixed"].shape))
    items = [("no registration", zero)]
    if case["true_field"] is not None:
        items.append(("truth", case["true_field"]))
    return items + list(fields.items())


def fig_functional(case, fields, path):
    """PET/CT, SPECT/CT (paper Fig. 4): CT grey, the warped functional image as a colour overlay,
    before, through the truth (where known) and after each method; EPE maps below where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = np.asarray(case["spacing"], float)
    sl = lambda a: CM.view_slice(a, case.get("view"))  # noqa: E731
    items = _fig_items(case, fields)
    rows = 2 if case["true_field"] is not None else 1
    n = len(items)
    fig, ax = plt.subplots(rows, n, figsize=(2.0 * n, 2.2 * rows), dpi=80, squeeze=False)
    ct = sl(case["fixed"])
    lo, hi = np.percentile(ct, [1, 99.5])
    mv = case["moving"]
    vmax = np.percentile(mv[mv > 0], 99.5) if np.any(mv > 0) else 1.0
    for j, (name, f) in enumerate(items):
        w = sl(warp_linear(mv, f, sp))
        ax[0, j].imshow(ct, cmap="gray", vmin=lo, vmax=hi)
        ax[0, j].imshow(np.ma.masked_less(w, 0.35 * vmax), cmap="hot", vmin=0.2 * vmax, vmax=vmax, alpha=0.6)
        ax[0, j].set_title(name, fontsize=6)
        if rows == 2:
            e = epe_map(case, f)
            ax[1, j].imshow(sl(np.where(case["mask"], e, np.nan)), vmin=0, vmax=3, cmap="magma")
            ax[1, j].set_title("EPE (0-3 vox)", fontsize=6)
    _save(fig, ax, path)


def fig_view(case, fields, path):
    """3D real cases: fixed (red) / warped moving (green) on the case's view slice, the fixed labels'
    outlines (cyan) over it, EPE maps below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = np.asarray(case["spacing"], float)
    sl = lambda a: CM.view_slice(a, case.get("view"))  # noqa: E731
    items = _fig_items(case, fields)
    n = len(items)
    fig, ax = plt.subplots(2, n, figsize=(2.0 * n, 4.2), dpi=80, squeeze=False)
    norm = lambda a: (a - np.percentile(a, 1)) / (np.percentile(a, 99.5) - np.percentile(a, 1) + 1e-12)  # noqa: E731
    fs = norm(sl(case["fixed"]))
    for j, (name, f) in enumerate(items):
        ws = norm(sl(warp_linear(case["moving"], f, sp)))
        ax[0, j].imshow(np.stack([fs, ws, np.zeros_like(fs)], -1).clip(0, 1))
        if case.get("labels_fixed") is not None:
            for k in case["label_names"]:
                ax[0, j].contour((sl(case["labels_fixed"]) == k).astype(float), [0.5], colors="c", linewidths=0.4)
        ax[0, j].set_title(name, fontsize=6)
        e = epe_map(case, f)
        ax[1, j].imshow(sl(np.where(case["mask"], e, np.nan)), vmin=0, vmax=3, cmap="magma")
        ax[1, j].set_title("EPE (0-3 vox)", fontsize=6)
    _save(fig, ax, path)


# --------------------------------------------------------------------------- main


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem = ""
    try:
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) / 2**20:.0f} GB RAM"
    except Exception:  # noqa: BLE001
        pass
    return f"{nproc} cores (nproc), {cpu}, {mem}, Python {platform.python_version()}"


def busy_cores(seconds=1.0):
    """How many cores other processes kept busy over ``seconds`` (from /proc/stat; None elsewhere)."""
    def ticks():
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = ticks()
        time.sleep(seconds)
        t1, i1 = ticks()
    except (OSError, ValueError, IndexError):
        return None
    return (1.0 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)


def warn_if_busy():
    busy = busy_cores()
    if busy is not None and busy > 0.3:
        print(f"[warning] other processes keep {busy:.1f} core(s) busy: the wall times will be inflated "
              "(run the benchmark alone)", flush=True)


def apply_sets(items, error):
    """``--set DIM.KEY=VALUE ...``: change PRIORREG_SETTINGS here and in the spawned children."""
    if not items:
        return
    changes = {}
    for item in items:
        key, _, val = item.partition("=")
        if key.split(".")[0] not in PRIORREG_SETTINGS or "." not in key or not val:
            error(f"--set wants 2d.KEY=VALUE or 3d.KEY=VALUE, got {item!r}")
            continue  # (argparse's error exits; another handler may not)
        try:
            changes[key] = json.loads(val)
        except ValueError:
            changes[key] = val
    os.environ["PRIORREG_BENCH_SET"] = json.dumps(changes)
    for k, v in changes.items():
        PRIORREG_SETTINGS[k.split(".")[0]][k.split(".")[1]] = v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true", help="the quick set: " + ", ".join(C.QUICK))
    p.add_argument("--cases", nargs="*", help="case names: " + ", ".join(C.CASES))
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--peers", nargs="*", help="only these peers")
    p.add_argument("--no-priorreg", action="store_true", help="skip the priorreg rows (peers and no registration only)")
    p.add_argument("--set", nargs="*", default=[], metavar="DIM.KEY=VALUE",
                   help="change a priorreg setting for this run, e.g. 3d.force=warped 3d.tolerance=1e-3")
    a = p.parse_args(argv)
    apply_sets(a.set, p.error)
    names = a.cases or (C.QUICK if a.quick else list(C.CASES))
    os.makedirs(a.out, exist_ok=True)

    import peers

    avail = {} if a.no_peers else peers.available()
    for k, (fn, msg) in avail.items():
        if fn is None:
            print(f"[skip] {k}: {msg}")
    avail = {k: v for k, v in avail.items() if v[0] is not None and (not a.peers or k in a.peers)}

    import priorreg
    import torch

    versions = {"priorreg": getattr(priorreg, "__version__", "?"), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("SimpleITK", "itk", "ants", "convexAdam"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", None) or (m.Version.VersionString() if mod == "SimpleITK" else "?")
        except Exception:  # noqa: BLE001
            pass

    warn_if_busy()
    rows = []
    t_all = time.perf_counter()
    verified = set()
    for name in names:
        try:
            case = C.CASES[name]()
        except CM.DataNotFound as e:
            print(f"[skip] {name}: {e}", flush=True)
            SKIPPED[name] = str(e)
            continue
        d = case["fixed"].ndim
        DESCS[name] = (case["desc"], case["prior_note"])
        print(f"== {name}: {case['desc']}", flush=True)
        rows.append(dict(case=name, method="no registration", setting="", **baseline(case), seconds=0.0, peak_mb=0.0, delta_mb=0.0))
        fields = {}
        runs = []
        if a.no_priorreg:
            pass
        elif case["kind"] == "phantom":
            runs.append(("priorreg", "MI (alpha=1)", None, 1.0, {}))
            for key in ("small", "big"):
                runs.append(("priorreg", f"alpha=0, {key}-disc prior", key, 0.0, {}))
                runs.append(("priorreg", f"alpha=0.4, {key}-disc prior", key, 0.4, {}))
                runs.append(("priorreg", f"alpha=0, {key}-disc prior, CE", key, 0.0, dict(prior_term="ce")))
            # A regional prior (one table per block of an 8 x 8 grid) knows where the pair (disc, disc)
            # occurs. The disc must travel and change size by a third: the edge-driven flow needs more
            # than the default 300 iterations per level (PHANTOM_ITERATIONS, stated in the table).
            for key in ("small", "big"):
                for al in (0.0, 0.4):
                    runs.append(("priorreg", f"alpha={al:g}, {key}-disc REGIONAL prior 8x8", key, al,
                                 dict(regions=PHANTOM_REGIONS, extra=dict(max_iterations=PHANTOM_ITERATIONS))))
        else:
            for al in ALPHAS:
                runs.append(("priorreg", f"alpha={al:g}", None if al == 1 else "train", al, {}))
            runs.append(("priorreg", f"alpha={TERM_ALPHA:g} cKL", "train", TERM_ALPHA, dict(prior_term="ckl")))
            runs.append(("priorreg", f"alpha={TERM_ALPHA:g} CE", "train", TERM_ALPHA, dict(prior_term="ce")))
            runs.append(("priorreg", f"alpha={TERM_ALPHA:g} CE, MI at finest", "train", TERM_ALPHA,
                         dict(prior_term="ce", alpha_schedule="mi-finest")))
        for k in avail:
            if k == "convexadam" and d != 3:
                continue
            if k == "simpleitk-bspline" and d == 3 and a.quick:
                print("   [skip] simpleitk-bspline on 3D in --quick (ran > 4.5 min and 5 GB RSS here)", flush=True)
                continue
            runs.append((k, k, None, None, {}))
        for method, label, pkey, al, kw in runs:
            case["verify"] = method != "priorreg" and (method, d) not in verified
            try:
                if method == "priorreg":
                    r = run_isolated("priorreg", case, None if pkey in (None, "train") else pkey, al, **kw)
                else:
                    r = run_isolated(method, case)
                    verified.add((method, d))
            except Exception as e:  # noqa: BLE001
                print(f"   {label}: FAILED {type(e).__name__}: {e}", flush=True)
                rows.append(dict(case=name, method=label, error=f"{type(e).__name__}: {e}"))
                continue
            m = metrics(case, r["field"])
            setting = ""
            if method == "priorreg":
                s = _setting(case)
                setting = (f"lambda={s['regularization']:g}, bending={s['bending']:g}, B={s['bins']}, "
                           f"sigma={s['parzen_sigma']:g}, levels={s['levels']}")
                label = "priorreg " + label
            row = dict(case=name, method=label, setting=setting, seconds=r["seconds"], peak_mb=r["peak_mb"],
                       delta_mb=r["delta_mb"], **m)
            if "iterations" in r:
                row["iterations"] = r["iterations"]
            rows.append(row)
            fields[label] = r["field"]
            print("   " + _fmt_console(row), flush=True)
        if case["kind"] == "phantom":
            keep = {k: v for k, v in fields.items() if "0.4" not in k and "CE" not in k}
            fig_phantom(case, keep, os.path.join(a.out, f"{name}.png"))
        elif name in ("mni-axial-t2", "mni3d-2mm-t2", "brainweb-t1-pd"):
            keep = {k: v for k, v in fields.items() if k in ("priorreg alpha=1", "priorreg alpha=0.4") or not k.startswith("priorreg")}
            fig_overlay(case, keep, os.path.join(a.out, f"{name}.png"))
        elif case["kind"] in ("real-unaligned", "2d-real-selfprior", "sim-functional", "3d-real"):
            shown = ("priorreg alpha=1", "priorreg alpha=0.4") + (("priorreg alpha=0.4 cKL",) if case["kind"] != "3d-real" else ())
            keep = {k: v for k, v in fields.items() if k in shown or not k.startswith("priorreg")}
            fig = fig_view if case["kind"] == "3d-real" else fig_functional
            fig(case, keep, os.path.join(a.out, f"{name}.png"))
        _write(a.out, rows, names, versions, time.perf_counter() - t_all, partial=True)
    _write(a.out, rows, names, versions, time.perf_counter() - t_all, partial=False)
    print(f"wrote {a.out}/results.md, results.json ({time.perf_counter() - t_all:.0f} s)")


def _fmt_console(r):
    parts = [f"{r['method']:<34}"]
    for k in ("epe_mean", "epe_p95", "dice_mean", "dice_small", "dice_big", "fold_pct", "seconds", "peak_mb"):
        if k in r:
            parts.append(f"{k}={r[k]:.3f}")
    return " ".join(parts)


def _write(out, rows, names, versions, total, partial):
    hdr = (f"# priorreg benchmark results\n\nDate: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  \n"
           f"Machine: {machine()}  \nEvery tool limited to 2 threads; one registration at a time, each in a fresh "
           f"process. Wall time = the registration call only (for peers it includes the tool's own dense-field "
           f"conversion). Peak memory = max RSS of the run's process (interpreter, torch/tool libraries, data and the run; the number after + is the growth during the call).  \n"
           f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}  \nTotal run time: {total:.0f} s"
           f"{' (PARTIAL: run still going or interrupted)' if partial else ''}\n\n"
           f"priorreg settings: 2D {PRIORREG_SETTINGS['2d']}; 3D {PRIORREG_SETTINGS['3d']}; changed per kind of "
           f"case: {KIND_SETTINGS}; per prior term: {PRIOR_TERM_SETTINGS}; bending: "
           f"{_bending_text()} (one setting per dimension and kind of pair, and one rule, "
           f"chosen on tuning cases with other seeds, not per case; defaults otherwise). 'CE' rows use the "
           f"cross-entropy prior term instead of the paper's KL, 'cKL' rows the conditional KL (KL without its "
           f"moving-marginal part, priorreg.energy.PriorConditionalKL).\n\n")
    descs = [n for n in names if n in DESCS]
    lines = []
    brain = [r for r in rows if not r["case"].startswith("phantom")]
    ph = [r for r in rows if r["case"].startswith("phantom")]
    if brain:
        lines += ["## Brain and real-slice cases (EPE in voxels inside the brain/foreground mask of the fixed image)\n",
                  "| case | method | mean EPE | p95 EPE | label Dice (mean over the case's labels: tissues, tumour, cord levels) | % Jac <= 0 | time (s) | peak mem (MB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in brain:
            if "error" in r:
                lines.append(f"| {r['case']} | {r['method']} | failed: {r['error']} | | | | | |")
                continue
            best = min((x["epe_mean"] for x in brain if x["case"] == r["case"] and "epe_mean" in x and x["method"] != "no registration"), default=None)
            e = f"{r['epe_mean']:.3f}" if "epe_mean" in r else "– (no truth)"
            if best is not None and "epe_mean" in r and abs(r["epe_mean"] - best) < 1e-12:
                e = f"**{e}**"
            p95 = f"{r['epe_p95']:.2f}" if "epe_p95" in r else "–"
            dm = f"{r['dice_mean']:.3f}" if "dice_mean" in r else "–"
            lines.append(f"| {r['case']} | {r['method']} | {e} | {p95} | {dm} | {r['fold_pct']:.3f} | "
                         f"{r['seconds']:.1f} | {r['peak_mb']:.0f} (+{r['delta_mb']:.0f}) |")
    if ph:
        lines += ["\n## Circle phantom (paper Fig. 1; Dice of the warped moving disc, w < 0.6)\n",
                  "| case | method | Dice small | Dice big | Dice union | disc px | % Jac <= 0 | time (s) | peak mem (MB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in ph:
            if "error" in r:
                lines.append(f"| {r['case']} | {r['method']} | failed: {r['error']} | | | | | | |")
                continue
            lines.append(f"| {r['case']} | {r['method']} | {r['dice_small']:.3f} | {r['dice_big']:.3f} | "
                         f"{r['dice_union']:.3f} | {r['disc_px']} | {r['fold_pct']:.3f} | {r['seconds']:.1f} | {r['peak_mb']:.0f} (+{r['delta_mb']:.0f}) |")
    lines += ["\n## Cases\n"]
    for n in descs:
        lines.append(f"- `{n}`: {DESCS[n][0]}. Prior: {DESCS[n][1]}.")
    for n in names:
        if n in SKIPPED:
            lines.append(f"- `{n}`: skipped, {SKIPPED[n]}")
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(hdr + "\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(dict(date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine(), versions=versions,
                       priorreg_settings=PRIORREG_SETTINGS, kind_settings=KIND_SETTINGS,
                       prior_term_settings=PRIOR_TERM_SETTINGS, total_seconds=total, partial=partial, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
