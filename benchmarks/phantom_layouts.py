"""The circle phantom (paper Fig. 1) on other layouts, trained and registered as a user would (issue 20.5).

The benchmark's phantom (benchmarks/cases.py ``phantom``) has one layout per size: two discs side by side
on a horizontal line through the centre of a square image. This module draws the same experiment on other
layouts (circles swapped, vertical, diagonal, other radii, another size, a non-square image), trains the
prior exactly as a user would (``priorreg.fit_prior(f1, disc on the target)``, global and ``regions=8``)
and registers with the library's defaults, ``preset="paper"``, ``preset="atlas"`` and any other
configuration, printing the Dice of the warped disc with the small and the big disc and the percentage of folded pixels
(det(I + grad u) <= 0).

    nice -n 5 python3 benchmarks/phantom_layouts.py --layouts close256 swapped256 --configs default paper atlas
    python3 benchmarks/phantom_layouts.py --list

Each layout is a dict: image shape, centre and radius of the small and the big disc (pixels). The moving
disc has the root-mean-square radius of the two (the area between them, as in the benchmark: 29.1 for
20 / 36) and sits on the line between the two centres where it overlaps both by the same area.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from scipy import ndimage as ndi

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def _disc(shape, c, r):
    yy, xx = np.indices(shape, dtype=np.float64)
    return (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) <= r * r).astype(float)


def _pair(shape, rs, rb, gap, direction, centre=None, small_first=True):
    """(small centre, big centre): two discs on a line along ``direction`` (dy, dx), ``gap`` px between their
    rims, the midpoint of the two centres at ``centre`` (default: the image centre). ``small_first``: the
    small disc on the negative side of the direction (left / top)."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    c = np.asarray(centre if centre is not None else (shape[0] / 2.0, shape[1] / 2.0), float)
    span = rs + rb + gap
    a, b = c - d * span / 2.0, c + d * span / 2.0
    cs, cb = (a, b) if small_first else (b, a)
    return tuple(cs), tuple(cb)


LAYOUTS = {
    # the benchmark's own two (benchmarks/cases.py phantom(256, "close" / "gap"))
    "close256": dict(shape=(256, 256), rs=20, rb=36, rm=29.1, gap=2, direction=(0, 1)),
    "gap256": dict(shape=(256, 256), rs=20, rb=36, rm=29.1, gap=38, direction=(0, 1)),
    # other layouts of the same experiment
    "swapped256": dict(shape=(256, 256), rs=20, rb=36, gap=2, direction=(0, 1), small_first=False),
    "vertical256": dict(shape=(256, 256), rs=20, rb=36, gap=10, direction=(1, 0)),
    "radii256": dict(shape=(256, 256), rs=15, rb=45, gap=6, direction=(0, 1), small_first=False),
    "diagonal256": dict(shape=(256, 256), rs=20, rb=36, gap=8, direction=(1, 1)),
    "offcentre256": dict(shape=(256, 256), rs=18, rb=32, gap=4, direction=(1, -2), centre=(150, 110)),
    "close192": dict(shape=(192, 192), rs=15, rb=27, gap=1.5, direction=(0, 1)),
    "rect192x288": dict(shape=(192, 288), rs=18, rb=34, gap=12, direction=(1, 3), centre=(100, 150),
                        small_first=False),
}

# Held out: used by tests/test_phantom_layouts.py only, never to design the rule (small images, fast).
TEST_LAYOUTS = {
    "test-vertical112": dict(shape=(112, 112), rs=9, rb=16, gap=2, direction=(-1, 0), centre=(58, 54)),
    "test-diag96x128": dict(shape=(96, 128), rs=8, rb=15, gap=3, direction=(1, -1), centre=(46, 66)),
}


def scaled(spec: dict, s: float) -> dict:
    """The layout ``spec`` with every length multiplied by ``s`` (a smaller image of the same scene)."""
    out = dict(spec, shape=tuple(int(round(n * s)) for n in spec["shape"]))
    for k in ("rs", "rb", "rm", "gap"):
        if k in spec:
            out[k] = spec[k] * s
    if spec.get("centre") is not None:
        out["centre"] = tuple(c * s for c in spec["centre"])
    return out


def make_layout(name: str, spec: dict | None = None) -> dict:
    """The phantom of layout ``name``: fixed f1 (two discs, 1 on 0), moving f2 (one disc, 0.2 on 1), all
    blurred by 1 px; the masks of the small, big and moving disc; and the two training pairs
    {"small": (f1, disc on small), "big": (f1, disc on big)}."""
    spec = dict(spec if spec is not None else {**LAYOUTS, **TEST_LAYOUTS}[name])
    shape = tuple(spec["shape"])
    rs, rb = float(spec["rs"]), float(spec["rb"])
    rm = float(spec.get("rm", math.sqrt((rs * rs + rb * rb) / 2.0)))
    cs, cb = _pair(shape, rs, rb, float(spec["gap"]), spec["direction"], spec.get("centre"), spec.get("small_first", True))
    small, big = _disc(shape, cs, rs), _disc(shape, cb, rb)
    if (small * big).sum() > 0:
        raise ValueError(f"layout {name}: the discs overlap")
    for c, r in ((cs, rs), (cb, rb)):
        if min(c[0] - r, c[1] - r, shape[0] - 1 - c[0] - r, shape[1] - 1 - c[1] - r) < 2:
            raise ValueError(f"layout {name}: a disc leaves the image")
    # moving centre on the segment: equal overlap areas (bisection on the fraction t)
    cs_a, cb_a = np.asarray(cs), np.asarray(cb)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        m = _disc(shape, tuple(cs_a + mid * (cb_a - cs_a)), rm)
        if (m * small).sum() > (m * big).sum():
            lo = mid
        else:
            hi = mid
    cm = tuple(cs_a + 0.5 * (lo + hi) * (cb_a - cs_a))
    mov = _disc(shape, cm, rm)

    def bl(a):
        return ndi.gaussian_filter(a, 1.0)

    f1 = bl(np.maximum(small, big))
    return dict(
        name=name, shape=shape, fixed=f1, moving=bl(1.0 - 0.8 * mov), small=small > 0.5, big=big > 0.5,
        moving_disc=mov > 0.5, train={"small": (f1, bl(1.0 - 0.8 * small)), "big": (f1, bl(1.0 - 0.8 * big))},
        desc=f"{shape[0]}x{shape[1]}, small r={rs:g} at ({cs[0]:.0f},{cs[1]:.0f}), big r={rb:g} at "
             f"({cb[0]:.0f},{cb[1]:.0f}), moving r={rm:.1f} at ({cm[0]:.0f},{cm[1]:.0f})",
    )


# --------------------------------------------------------------------------- metrics


def jacobian_det(field):
    """det(I + grad u) of a 2D field in pixels (spacing 1), central differences (numpy.gradient)."""
    g = [np.gradient(field[c]) for c in range(2)]
    return (1 + g[0][0]) * (1 + g[1][1]) - g[0][1] * g[1][0]


def evaluate(case: dict, field) -> dict:
    pos = np.indices(case["shape"], dtype=np.float64) + field
    w = ndi.map_coordinates(case["moving"], pos, order=1, mode="nearest") < 0.6

    def dice(a, b):
        s = a.sum() + b.sum()
        return float(2.0 * (a & b).sum() / s) if s else float("nan")

    return dict(dice_small=dice(w, case["small"]), dice_big=dice(w, case["big"]),
                fold_pct=float(100.0 * np.mean(jacobian_det(field) <= 0)))


# --------------------------------------------------------------------------- configurations

# name -> keyword arguments of priorreg.register (besides prior=); a user's ways in.
CONFIGS = {
    "default": {},  # no options at all: the "default" preset, alpha "auto" with a prior
    "paper": dict(preset="paper"),  # the 2005 energy (alpha is still "auto" when a prior is given)
    "atlas": dict(preset="atlas"),  # the preset for a prior that decides (alpha 0.2, no linear stage)
    # the benchmark's phantom settings (benchmarks/run.py KIND_SETTINGS["phantom"], 1500 iterations);
    # alpha is added with --set '{"alpha": 0.4}' (without it, "auto")
    "bench": dict(mind_weight=0.0, tolerance=3e-4, prior_intensity_fit="none", regularization_scaling="none",
                  linear="none", max_iterations=1500),
}


def train(case: dict, target: str, regions: int):
    import priorreg

    f, m = case["train"][target]
    return priorreg.fit_prior(f, m, regions=regions)


def run_one(case: dict, target: str, regions: int, config: str, extra: dict | None = None) -> dict:
    import priorreg

    prior = train(case, target, regions)
    kw = dict(CONFIGS[config])
    kw.update(extra or {})
    t0 = time.perf_counter()
    res = priorreg.register(case["fixed"], case["moving"], prior=prior, warn=False, **kw)
    sec = time.perf_counter() - t0
    out = evaluate(case, res.field)
    want = out["dice_small" if target == "small" else "dice_big"]
    out.update(layout=case["name"], prior=target, regions=regions, config=config + ("" if not extra else f" {extra}"),
               seconds=round(sec, 1), ok=bool(want >= 0.9 and out["fold_pct"] == 0.0),
               alphas=[w.get("alpha") for w in res.prior_weights] if res.prior_weights else None,
               iterations=[h.as_dict().get("iterations") for h in res.history],
               stops=[h.as_dict().get("stop_reason") for h in res.history])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--priors", nargs="+", default=["small", "big"])
    p.add_argument("--regions", nargs="+", type=int, default=[1, 8])
    p.add_argument("--set", default="{}", help="JSON of extra register() keywords for every run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="draw every layout this much smaller or larger")
    p.add_argument("--json", help="append one JSON line per run to this file")
    p.add_argument("--list", action="store_true", help="print the layouts and stop")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.list:
        for name in list(LAYOUTS) + list(TEST_LAYOUTS):
            print(f"{name:16s} {make_layout(name)['desc']}")
        return
    extra = json.loads(a.set)
    print("| layout | prior | regions | config | Dice small | Dice big | fold % | s | alphas | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.layouts:
        spec = {**LAYOUTS, **TEST_LAYOUTS}[name]
        case = make_layout(name, scaled(spec, a.scale) if a.scale != 1 else spec)
        for target in a.priors:
            for regions in a.regions:
                for config in a.configs:
                    r = run_one(case, target, regions, config, extra)
                    al = "" if r["alphas"] is None else "/".join(f"{x:g}" for x in r["alphas"])
                    print(f"| {name} | {target} | {regions} | {r['config']} | {r['dice_small']:.3f} | {r['dice_big']:.3f} | "
                          f"{r['fold_pct']:.2f} | {r['seconds']:.1f} | {al} | {'yes' if r['ok'] else 'NO'} |", flush=True)
                    if a.json:
                        with open(a.json, "a") as fh:
                            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
