"""Sanity check of the cases in cases_more.py (not a test; run by hand, one case at a time is fine).

    OMP_WAIT_POLICY=PASSIVE python3 benchmarks/check_cases_more.py --out /tmp/cases_more [--register] [NAME ...]

For each case: sizes; where a true field exists, the moving image warped through it must match the
fixed image better than before (normalised cross-correlation and 32-bin mutual information inside the
mask; Dice of the labels); a PNG (fixed, moving, moving through the truth, overlays, mask and labels).
--register also runs priorreg once (alpha = 1, default options, 1 thread) and prints the mean EPE
before/after and the wall time: a plumbing check, not a benchmark.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

import cases as C  # noqa: E402
import cases_more as CM  # noqa: E402


def warp(img, field, spacing, order=1):
    pos = np.indices(img.shape, dtype=np.float64) + field / np.reshape(spacing, (-1,) + (1,) * img.ndim)
    return ndi.map_coordinates(img, pos, order=order, mode="nearest")


def ncc(a, b, m):
    a, b = a[m] - a[m].mean(), b[m] - b[m].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def mi(a, b, m, bins=32):
    x, y = a[m], b[m]
    rx = np.percentile(x, [0.5, 99.5])
    ry = np.percentile(y, [0.5, 99.5])
    h, _, _ = np.histogram2d(np.clip(x, *rx), np.clip(y, *ry), bins=bins, range=[rx, ry])
    p = h / h.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def epe(case, field):
    sp = np.asarray(case["spacing"], float).reshape((-1,) + (1,) * case["fixed"].ndim)
    return float(np.sqrt((((field - case["true_field"]) / sp) ** 2).sum(0))[case["mask"]].mean())


def figure(case, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, m = case["fixed"], case["moving"]
    sp = np.asarray(case["spacing"], float)
    sl = lambda a: CM.view_slice(a, case.get("view"))  # noqa: E731
    true = case["true_field"]
    w = warp(m, true, sp) if true is not None else None
    panels = [("fixed", sl(f), "gray"), ("moving", sl(m), "gray")]
    if w is not None:
        panels.append(("moving through truth", sl(w), "gray"))
    tf = case["prior_train"]
    if isinstance(tf, tuple):
        panels += [("prior fixed[0]", sl(tf[0][0]), "gray"), ("prior moving[0]", sl(tf[1][0]), "gray")]
    n = len(panels) + 2
    fig, axs = plt.subplots(1, n, figsize=(2.6 * n, 3.0), dpi=80)
    for a, (t, img, cm) in zip(axs, panels):
        a.imshow(img, cmap=cm)
        a.set_title(t, fontsize=7)
    fs = sl(f)
    norm = lambda a: (a - np.percentile(a, 1)) / (np.percentile(a, 99.5) - np.percentile(a, 1) + 1e-12)  # noqa: E731
    for a, (t, img) in zip(axs[len(panels):], [("fixed (R) / moving (G) before", sl(m)),
                                                ("fixed (R) / moving through truth (G)", sl(w) if w is not None else None)]):
        if img is None:
            a.axis("off")
            continue
        a.imshow(np.stack([norm(fs), norm(img), np.zeros_like(fs)], -1).clip(0, 1))
        a.set_title(t, fontsize=7)
    if case.get("mask") is not None:
        axs[0].contour(sl(case["mask"]).astype(float), [0.5], colors="c", linewidths=0.6)
    if case.get("labels_fixed") is not None:
        for k in case["label_names"]:
            axs[0].contour((sl(case["labels_fixed"]) == k).astype(float), [0.5], colors="r", linewidths=0.4)
            axs[1].contour((sl(case["labels_moving"]) == k).astype(float), [0.5], colors="r", linewidths=0.4)
    for a in axs:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"{case['name']}: {case['kind']}  (cyan: mask, red: labels)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check(name, out, register):
    t = time.perf_counter()
    case = C.CASES[name]()
    gen = time.perf_counter() - t
    f, m = case["fixed"], case["moving"]
    sp = np.asarray(case["spacing"], float)
    print(f"== {name} ({case['kind']}): shape {f.shape}, spacing {tuple(round(float(s), 3) for s in sp)}, "
          f"generated in {gen:.1f} s")
    print(f"   {case['desc']}\n   prior: {case['prior_note']}")
    assert m.shape == f.shape and np.all(np.isfinite(f)) and np.all(np.isfinite(m))
    tf = case["prior_train"]
    print(f"   prior pairs: {len(tf[0])}, shapes {[a.shape for a in tf[0]]}; fixed range {f.min():.3f}..{f.max():.3f}, "
          f"moving {m.min():.3f}..{m.max():.3f}")
    for a, b in zip(*tf):  # the test pair itself is never a training image
        assert a.shape != f.shape or not np.array_equal(a, f), "prior contains the fixed test image"
        assert b.shape != m.shape or not np.array_equal(b, m), "prior contains the moving test image"
    res = {}
    if case["true_field"] is not None:
        mk = case["mask"]
        v = case["true_field"] / sp.reshape((-1,) + (1,) * f.ndim)
        mag = np.sqrt((v**2).sum(0))
        w = warp(m, case["true_field"], sp)
        res = dict(ncc_before=ncc(f, m, mk), ncc_truth=ncc(f, w, mk), mi_before=mi(f, m, mk), mi_truth=mi(f, w, mk))
        print(f"   mask {int(mk.sum())} voxels; |true field| in mask: mean {mag[mk].mean():.2f}, max {mag[mk].max():.2f} vox "
              f"(whole grid max {mag.max():.2f})" + (f"; inversion residual {case['inversion_residual_vox']:.1e} vox"
                                                     if "inversion_residual_vox" in case else ""))
        print(f"   NCC in mask: before {res['ncc_before']:.3f} -> through truth {res['ncc_truth']:.3f};  "
              f"MI: {res['mi_before']:.3f} -> {res['mi_truth']:.3f}")
        assert res["ncc_truth"] > res["ncc_before"] or res["mi_truth"] > res["mi_before"]
        if case.get("labels_fixed") is not None:
            wl = warp(case["labels_moving"], case["true_field"], sp, order=0)
            parts = []
            for k, nm in case["label_names"].items():
                parts.append(f"{nm} {dice(case['labels_moving'] == k, case['labels_fixed'] == k):.2f}->"
                             f"{dice(wl == k, case['labels_fixed'] == k):.2f}")
            print("   Dice before->through truth: " + ", ".join(parts))
    figure(case, os.path.join(out, f"{name}.png"))
    if register:
        import torch

        import priorreg

        torch.set_num_threads(1)
        t = time.perf_counter()
        r = priorreg.register(f, m, spacing=tuple(sp), alpha=1.0)
        sec = time.perf_counter() - t
        msg = f"   priorreg alpha=1 defaults: {sec:.1f} s, folding {r.jacobian_stats['percent_nonpositive']:.3f} %"
        if case["true_field"] is not None:
            msg += f", mean EPE {epe(case, np.zeros_like(case['true_field'])):.3f} -> {epe(case, r.field):.3f} vox"
        print(msg, flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="cases (default: all of cases_more)")
    p.add_argument("--out", default="/tmp/cases_more")
    p.add_argument("--register", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name in a.names or list(C.MORE_CASES):  # cases_more.py and cases_linear.py
        try:
            check(name, a.out, a.register)
        except CM.DataNotFound as e:
            print(f"[skip] {name}: {e}")


if __name__ == "__main__":
    main()
