"""Regulariser weights in physical terms (issue 17.5): which rule for the bending weight holds across
voxel sizes, when the warp is a property of the anatomy (defined in mm) and not of the grid?

The benchmark's cases define their warps in voxels (cases.smooth_field: sigma and max |v| in voxels;
BraTS 2 mm: 4 voxels = 8 mm, sigma 24 mm; BraTS 1 mm: 6 mm, sigma 20 mm; spine: 4 voxels at 1 mm), so
a 2 mm case carries a warp twice as large and twice as smooth in mm as the same-named 1 mm one. Only
the ProstateX cases (cases_linear.prostate_3d) define theirs in mm. Here every warp is in mm, and the
same physical warp is sampled on two grids of the same anatomy:

    brats-1mm / brats-2mm   BraTS 2013 pat0005 T1c (fixed, warped) <- FLAIR (moving), brain bounding box
                            (optionally a slab of it, --brats-slab); ONE warp w (mm, Gaussian-filtered
                            noise, sigma 20 mm, max |w| 6 mm in the brain) drawn on
                            the 1 mm grid; the 2 mm pair is the 1 mm pair (warped T1c, FLAIR) Gaussian-
                            filtered (0.8 voxel) and sampled at every 2nd voxel, as cases_more._brats does,
                            and its truth is w at those voxels (mm)
    spine-1mm / spine-1x1x3 SCT errsm_30 T1w (fixed, warped) <- T2w (moving) on the T1w crop (42x60x55,
                            1 mm; cases_more.spine_pair); one warp (sigma 8 mm, max 4 mm in the cord + 2 mm);
                            the anisotropic pair averages 3 slices along the superior axis (a 3 mm thick-slice
                            acquisition), truth = w at the slab centres
    prostate-1mm / -4mm     ProstateX-0000 ADC (fixed) <- high-b (moving, warped), 2 x 2 x 3 mm as acquired;
                            cases_linear.prostate_3d (warp in mm: sigma 16 mm, max 1 or 4 mm) with new seeds
    bench-spine3d           the benchmark's own spinal-cord generator (cases_more.spine_3d, the C2-C3 slab;
                            warp in voxels = mm at 1 mm) at validation seeds
    brats-crop80-1mm / -2mm the BraTS pair on an 80 mm cube at the brain's centre, same warp statistics (sigma
                            20 mm, max 6 mm): the same deformation in a smaller field of view

Noise and bias (cases.corrupt) are drawn AFTER sampling, independently per grid. Seeds: validation
seeds 801-805 (never 600-609, the held-out seeds). Rules (the bending weight in mm^2 handed to
register(..., bending_scale="none", bending=...); everything else is the default preset):

    spacing   100 x (mean voxel size / 1 mm)^2  (today's default, bending_scale="spacing")
    min-h     100 x (smallest voxel size / 1 mm)^2
    mm100     100 mm^2 at every spacing (today's 1 mm value)
    mm400     400 mm^2 at every spacing (today's 2 mm value)
    extent    400 mm^2 x (L / 155 mm)^2, L = geometric mean of the image's extent (a scale-free candidate)
    fov       400 mm^2 x min(1, L / 100 mm)^2: the brain's weight, softened only in a small field of view
    fov-median  the same with L the median of the axes' extents (the library's rule)
    bVALUE    (--extra-bending) VALUE mm^2 at every spacing: the sweep

Rules that give the same weight on a grid share one run (isotropic grids: spacing = min-h). The runs of
benchmarks/results/regulariser-rule/ (priorreg's src at commit 2bf5fd6, one thread, one process at a time):

    git archive 2bf5fd6 src | tar -x -C /tmp/rr-head
    export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 PYTHONPATH=/tmp/rr-head/src
    R=benchmarks/results/regulariser-rule
    python3 benchmarks/regulariser_rule.py --out $R/rows.jsonl --families prostate --seeds 801 802 803 804 805 \
        --extra-bending 25 200 800 1600
    python3 benchmarks/regulariser_rule.py --out $R/rows.jsonl --families spine --linear none \
        --seeds 801 802 803 804 805 --extra-bending 25 200 800 1600
    python3 benchmarks/regulariser_rule.py --out $R/rows.jsonl --families brats --seeds 801 802 803 \
        --extra-bending 25 200 800 1600
    python3 benchmarks/regulariser_rule.py --out $R/rows.jsonl --families brats-crop --seeds 801 802 803 \
        --rules spacing mm100 mm400 extent --extra-bending 200 800
    python3 benchmarks/regulariser_rule.py --out $R/bench-spine-linear-none.jsonl --families benchmark \
        --seeds 801 802 803 804 805 --rules spacing mm400 --extra-bending 25 --linear none
    python3 benchmarks/regulariser_rule.py --out $R/bench-spine-linear-affine.jsonl --families benchmark \
        --seeds 801 802 803 804 805 --rules spacing mm400 --extra-bending 25
    # the tables; write $R/summary.json
    python3 benchmarks/regulariser_rule.py --table $R/rows.jsonl $R/bench-spine-linear-none.jsonl

The spine runs use --linear none: with the preset's affine stage, the 1 mm spine crop came out at
14-26 mm EPE on seeds 802-803 whatever the bending, and seed 804 was refused ("overlap too small")
($R/spine-linear-affine.jsonl: the spine command without --linear none, before the extent rule existed).
The benchmark's own spine generator fares the same with the affine stage: refused on seeds 802, 804 and
805, 4.4 mm off on 801 ($R/bench-spine-linear-affine.jsonl); its rows in the table are --linear none.

Each row: case, seed, rule, bending (mm^2), EPE mean / p95 in mm in the case's mask, the same in voxels
of the grid (for comparison with the benchmark's tables), folding (% voxels with det J <= 0), seconds.
Rows already in --out are skipped (the run can be resumed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import ndimage as ndi

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.append(os.path.join(HERE, "..", "src"))  # after PYTHONPATH: a snapshot given there wins

HELD_OUT = set(range(600, 610))

def extent_mm(h, shape):
    """Geometric mean of the image's extent (voxels x spacing per axis), mm."""
    return float(np.prod([n * s for n, s in zip(shape, h)]) ** (1.0 / len(shape)))


# bending weight (mm^2) from the spacing h and the grid's shape
RULES = {
    "spacing": lambda h, shape: 100.0 * float(np.mean(h)) ** 2,
    "min-h": lambda h, shape: 100.0 * float(np.min(h)) ** 2,
    "mm100": lambda h, shape: 100.0,
    "mm400": lambda h, shape: 400.0,
    # scale-free: 400 mm^2 x (extent / 155 mm)^2 (155 mm: the BraTS brain box, where 400 was best; added
    # AFTER the sweep below had been seen, so spine and prostate are not an independent test of it)
    "extent": lambda h, shape: 400.0 * (extent_mm(h, shape) / 155.0) ** 2,
    # 400 mm^2, softened only where the field of view is smaller than 100 mm (formulated after the sweep of
    # seeds 801-805 had been seen; tested on seeds 821-823, which decided nothing before): L the geometric
    # mean of the extents ("fov"), or their median ("fov-median": a thin slab of a large organ keeps 400)
    "fov": lambda h, shape: 400.0 * min(1.0, extent_mm(h, shape) / 100.0) ** 2,
    "fov-median": lambda h, shape: 400.0 * min(1.0, float(np.median([n * s for n, s in zip(shape, h)])) / 100.0) ** 2,
}


# --------------------------------------------------------------------------- cases (warps in mm)


def smooth_field_mm(shape, spacing, sigma_mm, max_mm, rng, mask=None):
    """Gaussian-filtered white noise, sigma in mm per axis, max |w| in ``mask`` = max_mm; returned in MM."""
    import cases_linear as CL

    w_vox = CL.smooth_field_mm(shape, spacing, sigma_mm, max_mm, rng, mask)
    return w_vox * np.reshape(np.asarray(spacing, float), (-1,) + (1,) * len(shape))


def _pull_mm(img, w_mm, spacing, order=1):
    pos = np.indices(img.shape, dtype=np.float64) + w_mm / np.reshape(np.asarray(spacing, float), (-1,) + (1,) * img.ndim)
    return ndi.map_coordinates(img, pos, order=order, mode="nearest")


def brats_pair(seed, sigma_mm=20.0, max_mm=6.0, slab=None, crop=None, tag="brats"):
    """{"brats-1mm": case, "brats-2mm": case}: one physical warp on both grids of the same anatomy."""
    import cases as C
    import cases_more as CM

    rng = np.random.default_rng(seed)
    t1c, flair, _, brain = CM._brats(CM.BRATS_TEST, 1)
    if slab:  # a slab along the last axis, centred on the brain (smaller runs)
        c = int(np.round(np.argwhere(brain).mean(0)[2]))
        z0 = max(0, c - slab // 2)
        t1c, flair, brain = t1c[..., z0:z0 + slab], flair[..., z0:z0 + slab], brain[..., z0:z0 + slab]
    if crop:  # a crop x crop x crop mm cube at the brain's centre (the same anatomy in a smaller field of view)
        c = np.round(np.argwhere(brain).mean(0)).astype(int)
        box = tuple(slice(max(0, k - crop // 2), max(0, k - crop // 2) + crop) for k in c)
        t1c, flair, brain = t1c[box], flair[box], brain[box]
    w = smooth_field_mm(t1c.shape, (1.0,) * 3, sigma_mm, max_mm, rng, brain)
    warped = C.pull(t1c, w)
    mask1 = C.pull(brain.astype(float), w) > 0.5
    out = {f"{tag}-1mm": dict(fixed=C.corrupt(warped, rng), moving=C.corrupt(flair, rng), spacing=(1.0,) * 3,
                             true_field=w, mask=mask1)}
    sub = (slice(1, None, 2),) * 3
    # the 2 mm grid's voxel i is the 1 mm voxel 2i + 1 (cases_more._brats)
    f2, m2 = ndi.gaussian_filter(warped, 0.8)[sub], ndi.gaussian_filter(flair, 0.8)[sub]
    mask2 = ndi.gaussian_filter(mask1.astype(float), 0.8)[sub] > 0.5
    out[f"{tag}-2mm"] = dict(fixed=C.corrupt(f2, rng), moving=C.corrupt(m2, rng), spacing=(2.0,) * 3,
                            true_field=np.ascontiguousarray(w[(slice(None),) + sub]), mask=mask2)
    desc = f"BraTS pat0005 T1c <- FLAIR, warp sigma {sigma_mm:g} mm, max {max_mm:g} mm in the brain"
    for k, c in out.items():
        c.update(name=k, desc=desc + f", {'x'.join(map(str, c['fixed'].shape))} voxels")
    return out


def spine_pair(seed, sigma_mm=8.0, max_mm=4.0, factor=3):
    """{"spine-1mm": case, "spine-1x1x3": case}: one physical warp, 1 mm and thick (factor mm) slices."""
    import cases as C
    import cases_more as CM

    rng = np.random.default_rng(seed)
    t1, t2, lv = CM.spine_pair()
    n = (t1.shape[2] // factor) * factor
    t1, t2, lv = t1[..., :n], t2[..., :n], lv[..., :n]
    roi = ndi.binary_dilation(lv > 0, iterations=2)  # the cord and its CSF ring
    w = smooth_field_mm(t1.shape, (1.0,) * 3, sigma_mm, max_mm, rng, roi)
    warped = C.pull(t1, w)
    mask1 = C.pull(roi.astype(float), w) > 0.5
    out = {"spine-1mm": dict(fixed=C.corrupt(warped, rng), moving=C.corrupt(t2, rng), spacing=(1.0,) * 3,
                             true_field=w, mask=mask1)}

    def thick(a):  # mean of `factor` consecutive slices along the last axis
        return a.reshape(a.shape[:2] + (n // factor, factor)).mean(-1)

    centre = slice(factor // 2, None, factor)
    out[f"spine-1x1x{factor}"] = dict(
        fixed=C.corrupt(thick(warped), rng), moving=C.corrupt(thick(t2), rng), spacing=(1.0, 1.0, float(factor)),
        true_field=np.ascontiguousarray(w[..., centre]), mask=thick(mask1.astype(float)) > 0.5)
    desc = f"SCT errsm_30 T1w <- T2w, warp sigma {sigma_mm:g} mm, max {max_mm:g} mm in the cord + 2 mm"
    for k, c in out.items():
        c.update(name=k, desc=desc + f", {'x'.join(map(str, c['fixed'].shape))} voxels")
    return out


def prostate_pair(seed):
    """{"prostate-1mm": case, "prostate-4mm": case}: cases_linear.prostate_3d (warp in mm), 2 x 2 x 3 mm."""
    import cases_linear as CL

    out = {}
    for k, mx, s in (("prostate-1mm", 1.0, seed), ("prostate-4mm", 4.0, seed + 1000)):
        c = CL.prostate_3d(seed=s, max_mm=mx)
        out[k] = dict(name=k, fixed=c["fixed"], moving=c["moving"], spacing=tuple(c["spacing"]),
                      true_field=c["true_field"], mask=c["mask"], desc=c["desc"] + f" (seed {s})")
    return out


def brats_crop_pair(seed):
    """brats_pair on an 80 mm cube at the brain's centre: the same warp statistics in a smaller field of view
    (tells a rule that follows the anatomy's deformation from one that follows the image's extent)."""
    return brats_pair(seed, crop=80, tag="brats-crop80")


def benchmark_cases(seed):
    """The benchmark's spinal-cord generator (cases_more.spine_3d: the C2-C3 slab, warp in voxels = mm at 1 mm)
    at validation seeds: what a change of the default would do to that headline row. (Its BraTS 1 mm
    generator, cases_more.brats_3d(1, seed), draws exactly the warp, noise and bias of brats_pair(seed) at
    1 mm: checked on seed 801, same EPE to 3 decimals; the 2 mm rows get 400 mm^2 under both rules.)"""
    import cases_more as CM

    out = {}
    for k, c in (("bench-spine3d", CM.spine_3d(seed=seed)),):
        out[k] = dict(name=k, fixed=c["fixed"], moving=c["moving"], spacing=tuple(c["spacing"]),
                      true_field=c["true_field"], mask=c["mask"], desc=c["desc"] + f" (seed {seed})")
    return out


FAMILIES = {"brats": brats_pair, "spine": spine_pair, "prostate": prostate_pair, "brats-crop": brats_crop_pair,
            "benchmark": benchmark_cases}


# --------------------------------------------------------------------------- metrics


def metrics(case, field):
    from run import jacobian_det  # det of x -> x + u(x), as the benchmark's tables count folding
    h = np.asarray(case["spacing"], float).reshape((-1,) + (1,) * case["fixed"].ndim)
    diff = field - case["true_field"]
    mm = np.sqrt((diff ** 2).sum(0))[case["mask"]]
    vox = np.sqrt(((diff / h) ** 2).sum(0))[case["mask"]]
    return dict(epe_mm=float(mm.mean()), p95_mm=float(np.percentile(mm, 95)), epe_vox=float(vox.mean()),
                fold_pct=float(100.0 * np.mean(jacobian_det(field, case["spacing"]) <= 0)))


def baseline(case):
    return metrics(case, np.zeros_like(case["true_field"]))


# --------------------------------------------------------------------------- driver


def run(out, families, seeds, rules, brats_slab=None, extra=(), linear=None):
    import torch

    import priorreg

    torch.set_num_threads(1)
    print(f"priorreg from {os.path.dirname(priorreg.__file__)}", flush=True)
    done = set()
    if os.path.exists(out):
        with open(out) as fh:
            done = {(r["case"], r["seed"], r["rule"]) for r in map(json.loads, fh)}  # refusals included
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    for fam in families:
        for seed in seeds:
            if seed in HELD_OUT:
                raise SystemExit(f"seed {seed} is a held-out test seed (600-609): not for this study")
            kw = dict(slab=brats_slab) if fam == "brats" else {}
            cases = FAMILIES[fam](seed, **kw)
            for name, case in cases.items():
                if (name, seed, "none") not in done:
                    _write(out, dict(case=name, seed=seed, rule="none", bending=None, spacing=case["spacing"],
                                     shape=list(case["fixed"].shape), desc=case["desc"], **baseline(case)))
                # rules that give the same weight on this grid share one run (isotropic grids: spacing = min-h)
                todo = {}
                for rule in list(rules) + [f"b{b:g}" for b in extra]:
                    b = RULES[rule](case["spacing"], case["fixed"].shape) if rule in RULES else float(rule[1:])
                    if (name, seed, rule) not in done:
                        todo.setdefault(round(b, 6), []).append(rule)
                for b, names in todo.items():
                    t = time.perf_counter()
                    lin = {} if linear is None else dict(linear=linear)
                    try:
                        r = priorreg.register(case["fixed"], case["moving"], spacing=case["spacing"], warn=False,
                                              bending_scale="none", bending=b, **lin)
                    except priorreg.PriorRegError as e:  # a refusal is a result too (recorded, no EPE)
                        for rule in names:
                            _write(out, dict(case=name, seed=seed, rule=rule, bending=b, spacing=case["spacing"],
                                             error=str(e)))
                        print(f"{name:14s} seed {seed} {'/'.join(names):20s} bending {b:6.0f}: refused: {e}", flush=True)
                        continue
                    sec = time.perf_counter() - t
                    m = metrics(case, r.field)
                    for rule in names:
                        _write(out, dict(case=name, seed=seed, rule=rule, bending=b, spacing=case["spacing"],
                                         shape=list(case["fixed"].shape), seconds=round(sec, 1), same_run_as=names,
                                         linear=r.options.linear,
                                         load=round(os.getloadavg()[0], 2), **m))
                    print(f"{name:14s} seed {seed} {'/'.join(names):20s} bending {b:6.0f}: EPE {m['epe_mm']:.3f} mm "
                          f"({m['epe_vox']:.3f} vox), fold {m['fold_pct']:.3f} %, {sec:.0f} s", flush=True)


def _write(path, row):
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def table(paths, out_json=None):
    """Two markdown tables from rows files: (1) the rules, mean EPE (mm) over seeds +- sd, [bending mm^2],
    the mean paired difference to 'spacing' and the worst folding; (2) the sweep: mean EPE (mm) per case
    at every constant bending weight that was run (rules included), the best one in bold."""
    rows = [r for r in (json.loads(s) for p in paths for s in open(p)) if "error" not in r]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    rules = [k for k in ["none"] + list(RULES) if any(r["rule"] == k for r in rows)]
    summary = {}
    out = ["| case (spacing mm) | " + " | ".join("no registration" if k == "none" else k for k in rules) + " |",
           "|---" * (len(rules) + 1) + "|"]
    for c in cases:
        sp = next(r["spacing"] for r in rows if r["case"] == c)
        cells, summary[c] = [], {"spacing": sp, "rules": {}, "sweep": {}}
        ref = {r["seed"]: r["epe_mm"] for r in rows if r["case"] == c and r["rule"] == "spacing"}
        for rule in rules:
            rr = [r for r in rows if r["case"] == c and r["rule"] == rule]
            if not rr:
                cells.append("-")
                continue
            e = np.array([r["epe_mm"] for r in rr])
            fold = max(r["fold_pct"] for r in rr)
            d = np.array([r["epe_mm"] - ref[r["seed"]] for r in rr if r["seed"] in ref])
            summary[c]["rules"][rule] = dict(
                bending=rr[0]["bending"], seeds=[r["seed"] for r in rr], epe_mm=e.tolist(), mean=float(e.mean()),
                sd=float(e.std(ddof=1)) if len(e) > 1 else None, diff_vs_spacing=d.tolist(),
                diff_sd=float(d.std(ddof=1)) if len(d) > 1 else None, worst_fold_pct=fold,
                epe_vox_mean=float(np.mean([r["epe_vox"] for r in rr])))
            b = "" if rr[0]["bending"] is None else f" [{rr[0]['bending']:.0f}]"
            sd = f" ± {e.std(ddof=1):.2f}" if len(e) > 1 else ""
            dd = f", Δ {d.mean():+.3f} ± {d.std(ddof=1):.3f}" if rule not in ("spacing", "none") and len(d) > 1 else ""
            fo = f", fold {fold:.2f} %" if fold > 0 else ""
            cells.append(f"{e.mean():.3f}{sd}{b}{dd}{fo}")
        n = len({r["seed"] for r in rows if r["case"] == c})
        out.append(f"| {c} ({'x'.join(f'{s:g}' for s in sp)}), n={n} | " + " | ".join(cells) + " |")
    bs = sorted({r["bending"] for r in rows if r["rule"] in ("mm100", "mm400") or r["rule"][:1] == "b"})
    const = [r for r in rows if r["bending"] in bs]  # every run at one of the constant weights (any rule's name)
    out += ["", "| case | " + " | ".join(f"{b:g}" for b in bs) + " |", "|---" * (len(bs) + 1) + "|"]
    for c in cases:
        m = {}
        for b in bs:
            by_seed = {r["seed"]: r["epe_mm"] for r in const if r["case"] == c and r["bending"] == b}
            if by_seed:
                m[b] = float(np.mean(list(by_seed.values())))
        summary[c]["sweep"] = {f"{b:g}": v for b, v in m.items()}
        best = min(m, key=m.get)
        out.append(f"| {c} | " + " | ".join(("-" if b not in m else (f"**{m[b]:.3f}**" if b == best else f"{m[b]:.3f}"))
                                            for b in bs) + " |")
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/regulariser-rule/rows.jsonl")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[801, 802, 803])
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    p.add_argument("--brats-slab", type=int, default=None, help="1 mm slices of the BraTS brain box (even; default all)")
    p.add_argument("--extra-bending", nargs="*", type=float, default=[],
                   help="also run these constant bending weights (mm^2), rows named bVALUE")
    p.add_argument("--linear", choices=["none", "rigid", "affine"], default=None,
                   help="the linear stage (default: the preset's, affine)")
    p.add_argument("--table", nargs="+", help="print the tables of rows files (and write summary.json beside the first)")
    a = p.parse_args()
    if a.table:
        print(table(a.table, os.path.join(os.path.dirname(a.table[0]), "summary.json")))
    else:
        run(a.out, a.families, a.seeds, a.rules, a.brats_slab, a.extra_bending, a.linear)
