"""The 2D brain comparison on many seeds: priorreg (alpha = 1, and alpha = 0.4 with the case's learned
prior) and every available peer on the same N random deformations (and noise, bias) per case generator.

    python3 benchmarks/seeds.py --out benchmarks/results/seeds [--seeds 300-309] [--generators NAME ...]
    python3 benchmarks/seeds.py --readme-table benchmarks/results/seeds/seeds.json   # the README's table

One case of run.py is one draw of its generator; a difference of 0.05 voxel between two tools on
one draw can be the draw. This runs each 2D generator of run.py on other seeds (300 and up: never
the benchmark's cases, seeds 1-7, nor the tuning seeds, 101-161) and reports per generator and
tool: the mean over seeds of the mean EPE (and its standard deviation), the mean p95, the worst
folding, the median time, and how many seeds priorreg won against each peer.

Each tool runs all seeds of one generator in one fresh spawned process (2 threads), the call
itself timed, so the import and start-up costs are outside the times, as in run.py.
Writes seeds.md and seeds.json into --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as R  # noqa: E402  (sets the thread limits before torch / ITK are imported)

GENERATORS = {
    "mni-axial-t2": ("brain_2d", ("axial", "t2")),
    "mni-axial-pd": ("brain_2d", ("axial", "pd")),
    "mni-sagittal-t2": ("brain_2d", ("sagittal", "t2")),
    "mni-sagittal-pd": ("brain_2d", ("sagittal", "pd")),
    "brainweb-t1-pd": ("real_2d", ("brainweb",)),
    "ixi-t2-pd": ("real_2d", ("ixi",)),
}
# 3D generators (not in the default set; ask for them with --generators): the MNI volume at 2 mm and
# BraTS patient 5 at 2 mm (its prior: patient 6)
GENERATORS_3D = {
    "mni3d-2mm-t2": ("brain_3d", ("t2",)),
    "brats3d-2mm-flair-t1c": ("cases_more.brats_3d", (2,)),
}
# Generators whose learned prior comes from other slices or another subject (never the test anatomy):
# only these get the "priorreg default + prior" row (BrainWeb, IXI and the MNI volume have only
# the test anatomy itself to learn from; cases.py's prior_note says so).
CROSS_SUBJECT_PRIOR = {"mni-axial-t2", "mni-axial-pd", "mni-sagittal-t2", "mni-sagittal-pd", "brats3d-2mm-flair-t1c",
                       "sim-petct-brain", "sim-spectct-brain", "sim-petct-thorax", "sim-spectct-thorax"}


# priorreg rows, (alpha, prior term): "priorreg" (alpha = 1, the row every other row is paired with) and the
# blend with the case's learned prior at the paper's alpha = 0.4, with the paper's KL and with the
# conditional KL (run.py's setting: intensity fit, regulariser x alpha).
# "priorreg default + prior": what a user gets with a prior and no flags (alpha "auto").
PRIORREG_ROWS = {"priorreg": (1.0, "kl"), "priorreg alpha=0.4": (0.4, "kl"), "priorreg alpha=0.4 cKL": (0.4, "ckl"),
                 "priorreg default + prior": ("auto", "kl")}


# The functional (PET/SPECT with CT) generators of cases_more.py, where the learned prior is meant to
# help: not in the default set (SimpleITK takes ~10 s per thorax draw); ask for them with --generators.
FUNCTIONAL_GENERATORS = {
    "spect-petct-selfprior": ("cases_more.spect_petct_selfprior", ()),
    "sim-petct-thorax": ("cases_more.sim_thorax", ("pet",)),
    "sim-spectct-thorax": ("cases_more.sim_thorax", ("spect",)),
    "sim-petct-brain": ("cases_more.sim_brain", ("pet",)),
    "sim-spectct-brain": ("cases_more.sim_brain", ("spect",)),
    # the test functional image "from another scanner" (cases_more.RESCAN), the prior from the first
    "spect-petct-selfprior-rescanned": ("cases_more.spect_petct_selfprior", (), dict(rescan=True)),
    "sim-spectct-thorax-rescanned": ("cases_more.sim_thorax", ("spect",), dict(rescan=True)),
}


ALL_GENERATORS = {**GENERATORS, **GENERATORS_3D, **FUNCTIONAL_GENERATORS}


def make_case(gen, seed):
    import cases as C
    import cases_more as CM

    fn, args, *kw = ALL_GENERATORS[gen]
    module, _, name = fn.rpartition(".")
    return getattr(CM if module == "cases_more" else C, name)(*args, seed=seed, **(kw[0] if kw else {}))


def _batch(method, gen, seeds):
    """Child process: run ``method`` on every seed of ``gen``; metrics and call time per seed."""
    import torch

    torch.set_num_threads(2)
    out = []
    for seed in seeds:
        case = make_case(gen, seed)
        if method in PRIORREG_ROWS:
            import priorreg

            alpha, term = PRIORREG_ROWS[method]
            s = R._setting(case)
            s.update(R.PRIOR_TERM_SETTINGS.get(term, {}))
            # the case's own prior (other slices / subjects), as in run.py; not timed
            prior = R.case_prior(case, s) if alpha != 1 else None
            given = {} if alpha == "auto" else dict(alpha=alpha, prior_term=term)  # "auto": nothing but the prior
            t = time.perf_counter()
            r = priorreg.register(case["fixed"], case["moving"], prior=prior, spacing=case["spacing"], **given, **s)
            dt = time.perf_counter() - t
            field = r.field
        else:
            import peers

            fn = dict(peers.available())[method][0]
            t = time.perf_counter()
            field = fn(case["fixed"], case["moving"], case["spacing"], verify=False)
            dt = time.perf_counter() - t
        m = R.metrics(case, field)
        out.append(dict(seed=seed, seconds=dt, epe_mean=m["epe_mean"], epe_p95=m["epe_p95"], fold_pct=m["fold_pct"]))
    return out


def parse_seeds(text):
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _row(meth, draws, ours, with_sd):
    """One table row from ``draws`` = [((generator, seed), result)], paired with priorreg's ``ours``."""
    e = np.array([r["epe_mean"] for _, r in draws])
    mean = f"{e.mean():.3f} ({e.std():.3f})" if with_sd else f"{e.mean():.3f}"
    won = "" if meth == "priorreg" else f"{sum(ours[k] < r['epe_mean'] for k, r in draws if k in ours)}/{len(draws)}"
    # (for the "priorreg alpha=0.4" rows: the draws where alpha = 1 was better than the blend)
    return (f"| {meth} | {mean} | {np.mean([r['epe_p95'] for _, r in draws]):.2f} | "
            f"{max(r['fold_pct'] for _, r in draws):.3f} | {np.median([r['seconds'] for _, r in draws]):.2f} | {won} |")


def summarise(results, gens, methods):
    """Markdown lines: one table per generator and one overall table (paired by seed)."""
    draws = {m: [((g, r["seed"]), r) for g in gens for r in results[g].get(m, [])] for m in methods}
    ours = {k: r["epe_mean"] for k, r in draws.get("priorreg", [])}
    lines = []
    for gen in gens:
        lines += [f"### {gen}", "", "| tool | mean EPE (sd over seeds) | mean p95 | worst % folding | median time (s) | "
                  "seeds priorreg (alpha = 1) won vs this row |", "|---|---|---|---|---|---|"]
        for meth in methods:
            rs = [(k, r) for k, r in draws[meth] if k[0] == gen]
            if rs:
                lines.append(_row(meth, rs, ours, with_sd=True))
        lines.append("")
    lines += ["### all generators", "", "| tool | mean EPE | mean p95 | worst % folding | median time (s) | seeds priorreg (alpha = 1) won |",
              "|---|---|---|---|---|---|"]
    lines += [_row(meth, draws[meth], ours, with_sd=False) for meth in methods if draws[meth]]
    return lines


README_COLUMNS = [("priorreg", "priorreg a=1"), ("priorreg default + prior", "priorreg + prior (auto)"),
                  ("priorreg alpha=0.4", "a=0.4 KL"), ("priorreg alpha=0.4 cKL", "a=0.4 cKL"),
                  ("simpleitk-bspline", "SimpleITK"), ("elastix-bspline", "elastix"), ("ants-syn", "ANTs SyN"),
                  ("niftyreg-f3d", "NiftyReg F3D"), ("greedy-nmi", "greedy"), ("convexadam", "ConvexAdam")]


def readme_table(results, label, n_seeds):
    """The README's compact table from seeds.json's results: per generator mean ± sd over the draws (all
    draws: mean and median time), worst folding, and, paired by seed with alpha = 1, how often each row
    beat alpha = 1 (priorreg rows) or alpha = 1 beat it (peers)."""
    cols = [c for c in README_COLUMNS if any(c[0] in r for r in results.values())]
    lines = [f"| {label} ({n_seeds} draws each) | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    draws = {m: {(g, r["seed"]): r for g, res in results.items() for r in res.get(m, [])} for m, _ in cols}
    ours = {k: r["epe_mean"] for k, r in draws.get("priorreg", {}).items()}
    for gen in list(results) + [None]:
        cells = []
        for m, _ in cols:
            rs = {k: r for k, r in draws[m].items() if gen is None or k[0] == gen}
            if not rs:
                cells.append("-")
                continue
            e = np.array([r["epe_mean"] for r in rs.values()])
            c = f"{e.mean():.2f} ± {e.std():.2f}" if gen else f"{e.mean():.2f}, median {np.median([r['seconds'] for r in rs.values()]):.2f} s"
            fold = max(r["fold_pct"] for r in rs.values())
            if fold > 0:
                c += f", fold <= {fold:.2f} %"
            paired = [(ours[k], r["epe_mean"]) for k, r in rs.items() if k in ours]
            if m.startswith("priorreg alpha"):
                c += f" (better than a=1 on {sum(x < a1 for a1, x in paired)}/{len(paired)})"
            elif m != "priorreg":
                c += f" (a=1 won {sum(a1 < x for a1, x in paired)}/{len(paired)})"
            cells.append(c)
        n = len({k for d in draws.values() for k in d})
        lines.append(f"| {gen or f'all {n} draws'} | " + " | ".join(cells) + " |")
    return lines


def methods_for(gen, headline, no_prior, peer_names):
    """The rows run on generator ``gen``: priorreg's, then the peers (ConvexAdam is 3D only; SimpleITK's
    B-spline is left out in 3D: more than 4.5 min and 5 GB per draw here)."""
    three_d = gen in GENERATORS_3D
    if headline:
        ours = ["priorreg"] + (["priorreg default + prior"] if gen in CROSS_SUBJECT_PRIOR else [])
    else:
        ours = ["priorreg"] + ([] if no_prior else ["priorreg alpha=0.4", "priorreg alpha=0.4 cKL"])
    skip = {"simpleitk-bspline"} if three_d else {"convexadam"}
    return ours + [k for k in peer_names if k not in skip]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results", "seeds"))
    p.add_argument("--seeds", default="300-309", help="first-last seed (default 300-309)")
    p.add_argument("--generators", nargs="*", choices=sorted(ALL_GENERATORS),
                   help="default: the six 2D MR generators (the 3D and functional ones only when named)")
    p.add_argument("--headline", action="store_true",
                   help="the held-out table's rows: the default without and (cross-subject priors only) with a prior, and the peers")
    p.add_argument("--peers", nargs="*", help="only these peers (default: every available one)")
    p.add_argument("--set", nargs="*", default=[], metavar="2d.KEY=VALUE", help="change a priorreg setting (as run.py)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--no-prior", action="store_true", help="skip the alpha = 0.4 rows (learned prior)")
    p.add_argument("--readme-table", metavar="SEEDS_JSON", help="only print the README's compact table of a finished run")
    a = p.parse_args(argv)
    if a.readme_table:
        run = json.load(open(a.readme_table))
        functional = any(g in FUNCTIONAL_GENERATORS for g in run["results"])
        print("\n".join(readme_table(run["results"], "functional generator" if functional else "2D generator", len(run["seeds"]))))
        return
    R.apply_sets(a.set, p.error)
    seeds = parse_seeds(a.seeds)
    gens = a.generators or list(GENERATORS)
    import peers

    avail = peers.available()
    for k, (fn, msg) in avail.items():
        if fn is None:
            print(f"[skip] {k}: {msg}")
    peer_names = [] if a.no_peers else [k for k, (fn, _) in avail.items() if fn is not None and (not a.peers or k in a.peers)]
    os.makedirs(a.out, exist_ok=True)
    R.warn_if_busy()
    results = {g: {} for g in gens}
    t0 = time.perf_counter()
    methods = []
    for gen in gens:
        for meth in methods_for(gen, a.headline, a.no_prior, peer_names):
            methods += [] if meth in methods else [meth]
            try:
                results[gen][meth] = R.in_fresh_process(_batch, meth, gen, seeds, timeout=1800)
            except Exception as e:  # noqa: BLE001  (a peer that crashes is reported, the run goes on)
                print(f"[error] {meth} on {gen}: {type(e).__name__}: {e}", flush=True)
                continue
            e = [r["epe_mean"] for r in results[gen][meth]]
            print(f"{gen:18s} {meth:18s} mean EPE {np.mean(e):.3f} over {len(e)} seeds "
                  f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
    lines = [f"# priorreg vs peers on {len(seeds)} seeds per 2D generator (seeds {seeds[0]}-{seeds[-1]})", "",
             f"Date: {datetime.date.today()}  \nMachine: {R.machine()}  \npriorreg setting: "
             f"{R.PRIORREG_SETTINGS['2d']} (bending {R.BENDING_PER_VOXEL2} x h^2)  \nTotal time "
             f"{time.perf_counter() - t0:.0f} s. Mean EPE in voxels inside the brain / foreground.", ""]
    lines += summarise(results, gens, methods)
    with open(os.path.join(a.out, "seeds.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "seeds.json"), "w") as fh:
        json.dump(dict(date=datetime.datetime.now().isoformat(timespec="seconds"), machine=R.machine(), seeds=seeds,
                       setting=R.PRIORREG_SETTINGS["2d"], results=results), fh, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
