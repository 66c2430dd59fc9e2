"""``priorreg demo``: the main job on bundled data, with a known answer.

The BrainWeb T1 and proton-density slices bundled under ``priorreg/data/brainweb`` are
pixel-aligned. The demo learns a prior from the front half of that pair (other anatomy than the
test region: never the test pair itself), deforms the PD slice's back half by a known smooth field
(fixed seed), registers it back onto T1 with alpha = "auto" (priorreg decides per level how much
to trust the prior: a prior of one training pair gets none) and with alpha = 0.7 (the prior used
anyway), and reports the endpoint error of each recovered field against the known one.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import io as pio
from . import workflow as wf
from .errors import PriorRegError
from .options import preset_options

DATA = Path(__file__).resolve().parent / "data" / "brainweb"
FIXED = DATA / "BrainT1Slice.png"
MOVING = DATA / "BrainProtonDensitySlice.png"
MARKER = "demo.json"
SEED = 7
MAX_DISPLACEMENT_MM = 5.0
ALPHAS = ("auto", 0.7)


def known_field(shape, max_disp=MAX_DISPLACEMENT_MM, seed=SEED) -> np.ndarray:
    """A smooth random displacement (d, *shape) in voxels with max norm ``max_disp``."""
    rng = np.random.default_rng(seed)
    sigma = max(shape) / 6
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in shape])
    return v * (max_disp / np.sqrt((v**2).sum(0)).max())


def pull(image: np.ndarray, v: np.ndarray, order=1) -> np.ndarray:
    """image(x + v(x)) (pull-back, v in voxels)."""
    grid = np.indices(image.shape).astype(float)
    return ndimage.map_coordinates(image, grid + v, order=order, mode="nearest")


def inverse_field(v: np.ndarray, iterations: int = 40) -> np.ndarray:
    """u with u(x) + v(x + u(x)) = 0: the field that undoes ``pull(., v)`` (fixed-point iteration)."""
    grid = np.indices(v.shape[1:]).astype(float)
    u = -v.copy()
    for _ in range(iterations):
        u = -np.stack([ndimage.map_coordinates(v[k], grid + u, order=1, mode="nearest") for k in range(v.shape[0])])
    return u


def _prepare(out: str, overwrite: bool) -> None:
    if not os.path.exists(out):  # the checks register's --out gets (empty, in /proc, under a file, too long)
        wf.check_out_dir(out, [], overwrite, "demo: --out")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise PriorRegError(f"demo: --out {out} exists and is not a directory")
        if os.listdir(out) and not overwrite and not os.path.exists(os.path.join(out, MARKER)):
            raise PriorRegError(f"demo: output directory {out} exists, is not empty and is not an earlier demo; use --overwrite or another --out")
    os.makedirs(out, exist_ok=True)
    pio.write_bytes(os.path.join(out, MARKER), b'{"demo": "running"}\n')  # marks the directory as the demo's


def run(out: str = "priorreg-demo", *, device: str = "cpu", overwrite: bool = False, console=None, options=None) -> dict:
    """Run the demo into ``out``; returns {"alpha=auto": path of its report.html, "alpha=0.7": ...}.

    ``options``: extra engine option overrides (the tests use them to keep it short).
    """
    from .prior import fit_prior

    _prepare(out, overwrite)
    fixed = pio.read_image(FIXED, "demo fixed")
    moving = pio.read_image(MOVING, "demo moving")
    if fixed.shape != moving.shape:  # pragma: no cover - bundled data
        raise PriorRegError("demo: bundled images differ in shape")
    (train_f, fixed), (train_m, moving) = _split(fixed), _split(moving)
    mask = fixed.array > 0.05 * fixed.array.max()
    v = known_field(fixed.shape)
    deformed = moving.with_array(pull(moving.array.astype(np.float64), v).astype(np.float32))
    true_u = inverse_field(v)  # in voxels; spacing 1 mm
    true_mm = true_u * np.asarray(fixed.spacing).reshape(-1, 1, 1)

    pio.write_image(fixed, os.path.join(out, "fixed_T1.nii.gz"))
    pio.write_image(deformed, os.path.join(out, "moving_PD_deformed.nii.gz"))
    pio.write_field(np.einsum("ij,j...->...i", fixed.direction, true_mm), fixed, os.path.join(out, "true_field.nii.gz"))
    prior = fit_prior([train_f], [train_m])  # from the other half of the slice
    prior.save(os.path.join(out, "prior.npz"))

    results = {}
    import torch

    threads = torch.get_num_threads()
    # A 217x181 slice is too small to gain from threads, and busy-waiting OpenMP threads slow
    # down by orders of magnitude when another process shares the cores.
    torch.set_num_threads(1)
    try:
        _register_all(results, fixed, deformed, prior, true_mm, mask, device, console, options)
    finally:
        torch.set_num_threads(threads)
    _finish(out, results, fixed, true_mm, mask, prior)
    return {f"alpha={_label(a)}": os.path.join(out, _dirname(a), "report.html") for a in ALPHAS}


def _split(img):
    """(front half, back half) of a slice along its first array axis, each with its own origin."""
    n = img.shape[0] // 2
    front = img.with_array(np.ascontiguousarray(img.array[:n]))
    back = img.with_array(np.ascontiguousarray(img.array[n:]))
    back.origin = tuple(np.asarray(img.origin) + img.direction[:, 0] * img.spacing[0] * n)
    return front, back


def _register_all(results, fixed, deformed, prior, true_mm, mask, device, console, options):
    from .api import register

    for alpha in ALPHAS:
        opts = preset_options("default", fixed.ndim).replace(**(options or {}))  # what register() runs
        cb = None if console is None else console.progress(opts.max_iterations, opts.levels, label=f"alpha={_label(alpha)} ",
                                                          before=wf.ahead_of_levels(opts), spacing=fixed.spacing)
        res = register(fixed, deformed, prior=prior, alpha=alpha, device=device, callback=cb, warn=False,
                       **(options or {}))
        if console is not None:
            console.end_bar(done=True)
        err = np.sqrt(((res.field - true_mm) ** 2).sum(0))
        results[alpha] = (res, {
            "alpha": alpha,
            "endpoint_error_mm_mean": float(err[mask].mean()),
            "endpoint_error_mm_p95": float(np.percentile(err[mask], 95)),
            "endpoint_error_mm_max": float(err[mask].max()),
            "seconds": res.seconds,
            "percent_folding": res.jacobian_stats["percent_nonpositive"],
        })
        wf.speak_warnings(res)
        if console is not None:
            console.note(f"alpha={_label(alpha)}: {wf.summary(res)}; endpoint error {err[mask].mean():.3f} mm")
            for w in res.warnings:
                console.note(f"warning: {w}")


def _finish(out, results, fixed, true_mm, mask, prior):
    true_norm = np.sqrt((true_mm**2).sum(0))
    summary = {
        "demo": "BrainWeb T1 (fixed) / PD (moving), back half of the slice, PD deformed by a known smooth field; "
                "prior from the front half",
        "known_field": {"seed": SEED, "max_mm": MAX_DISPLACEMENT_MM, "mean_mm_in_head": float(true_norm[mask].mean())},
        "endpoint_error": [r[1] for r in results.values()],
        "reports": {f"alpha={_label(a)}": os.path.join(_dirname(a), "report.html") for a in ALPHAS},
    }
    extra_html = _summary_html(results, float(true_norm[mask].mean()))
    # the images registered are the ones written beside the reports (the back half of the bundled slices, the PD deformed)
    inputs = {"fixed": {**wf.file_stamp(os.path.join(out, "fixed_T1.nii.gz")), "made_from": str(FIXED)},
              "moving": {**wf.file_stamp(os.path.join(out, "moving_PD_deformed.nii.gz")), "made_from": str(MOVING),
                         "deformed_by": "known_field (demo)"}}
    for alpha, (res, stats) in results.items():
        wf.write_outputs(os.path.join(out, _dirname(alpha)), res, prior=prior, mask=None,
                         inputs=inputs, extra={"demo": {**summary, "this_run": stats}}, extra_html=extra_html)
    pio.write_bytes(os.path.join(out, MARKER), (json.dumps(summary, indent=2) + "\n").encode())


def _summary_html(results, mean_mm: float) -> str:
    """The demo's section of each report.html: the endpoint errors of both runs."""
    rows = "".join(
        f"<tr><td>{_label(a)}</td><td>{_energy(r)}</td>"
        f"<td>{s['endpoint_error_mm_mean']:.3f}</td><td>{s['endpoint_error_mm_p95']:.3f}</td>"
        f"<td>{s['percent_folding']:.3f}</td><td><a href='../{_dirname(a)}/report.html'>{_dirname(a)}/report.html</a></td></tr>"
        for a, (r, s) in results.items()
    )
    return (
        "<h2>Demo: recovering a known deformation</h2><p class='cap'>"
        + html.escape(
            f"The bundled BrainWeb PD slice was deformed by a known smooth field (seed {SEED}, max "
            f"{MAX_DISPLACEMENT_MM:g} mm, mean {mean_mm:.2f} mm inside the head) and registered back "
            "onto the T1 slice. Endpoint error = |recovered field - true field| inside the head. The prior was learned "
            "on the other half of the slice (other anatomy: never the test region)."
        )
        + "</p><table><tr><th>alpha</th><th>energy</th><th>mean EPE mm</th><th>95% EPE mm</th><th>% folding</th>"
        + f"<th>report</th></tr>{rows}</table>"
    )


def _dirname(alpha: float) -> str:
    return f"alpha{_label(alpha)}"


def _label(alpha) -> str:
    return alpha if isinstance(alpha, str) else f"{alpha:g}"


def _energy(res) -> str:
    """What the run minimised: MI alone where alpha was 1 at every level (auto can choose that)."""
    alphas = [w["alpha"] for w in res.prior_weights] or [res.options.alpha]
    return "MI + learned prior" if min(alphas) < 1 else "MI only (alpha auto gave the prior no weight)"
