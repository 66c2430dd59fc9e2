"""The real PET/CT thorax slice (case ``petct-real``: CT fixed, PET moving, separate scans, no ground
truth), side by side: no registration, priorreg (``preset="functional"``), elastix rigid+affine+bspline,
ANTs SyN, NiftyReg aladin+f3d, greedy affine then deformable. Each panel: CT in grey, the warped PET as a
colour overlay, CT edges in cyan; the title gives the mutual information of CT and warped PET inside the
body (64-bin histogram, nats) and the % of pixels with Jacobian <= 0.

    python benchmarks/petct_side_by_side.py [OUT_DIR]   (default benchmarks/results/peers-nr-greedy)

Each registration runs in a fresh process with 2 threads (as in run.py). The fields are kept in
petct-real-fields.npz next to the figure.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases as C  # noqa: E402
import run as R  # noqa: E402

METHODS = {  # title -> peers.py runner name (None: priorreg)
    "priorreg functional": None,
    "elastix rigid+affine+bspline": "elastix-affine-bspline",
    "ANTs SyN": "ants-syn",
    "NiftyReg aladin+f3d": "niftyreg-aladin-f3d",
    "greedy -a then -d": "greedy-affine-nmi",
}


def register(peer, case):
    """One dense field (mm along the array axes, pull-back), computed in this (fresh) process."""
    import torch

    torch.set_num_threads(2)
    if peer is None:
        import priorreg

        return priorreg.register(case["fixed"], case["moving"], spacing=case["spacing"], preset="functional").field
    import peers

    return peers.available()[peer][0](case["fixed"], case["moving"], np.asarray(case["spacing"]), verify=False)


def mutual_information(a, b, bins=64):
    p, _, _ = np.histogram2d(a, b, bins=bins)
    p /= p.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def figure(case, fields, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct, pet, body, sp = case["fixed"], case["moving"], case["mask"], np.asarray(case["spacing"])
    lo, hi = np.percentile(ct, [1, 99.5])
    vmax = np.percentile(pet[pet > 0], 99.5)
    fig, ax = plt.subplots(1, len(fields), figsize=(3.0 * len(fields), 3.4), dpi=110, squeeze=False)
    for a, (name, f) in zip(ax[0], fields.items()):
        w = R.warp_linear(pet, f, sp)
        a.imshow(ct, cmap="gray", vmin=lo, vmax=hi)
        a.imshow(np.ma.masked_less(w, 0.45 * vmax), cmap="hot", vmin=0.3 * vmax, vmax=vmax, alpha=0.5)
        a.contour(ct, [0.15 * hi], colors="c", linewidths=0.4)  # body and lung outlines of the CT
        mi = mutual_information(ct[body], w[body])
        a.set_title(f"{name}\nMI {mi:.3f}, fold {R.metrics(case, f)['fold_pct']:.2f} %", fontsize=7)
    R._save(fig, ax, path)


def main(out):
    os.makedirs(out, exist_ok=True)
    case = C.CASES["petct-real"]()
    fields = {"no registration": np.zeros((2, *case["fixed"].shape))}
    for title, peer in METHODS.items():
        try:
            fields[title] = R.in_fresh_process(register, peer, case)
        except Exception as e:  # noqa: BLE001 (a peer that is not installed or fails is left out, with a message)
            print(f"{title}: FAILED {type(e).__name__}: {e}", flush=True)
    np.savez_compressed(os.path.join(out, "petct-real-fields.npz"), **{k.replace(" ", "_"): v for k, v in fields.items()})
    figure(case, fields, os.path.join(out, "petct-real-side-by-side.png"))
    print("wrote", os.path.join(out, "petct-real-side-by-side.png"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results", "peers-nr-greedy"))
