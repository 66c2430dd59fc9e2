"""alpha="auto" (issue 20): measure the evidence, compare alpha = 1, 0.4 and auto on cross-subject cases.

    python3 benchmarks/auto_alpha.py run --out /tmp/aa/val.jsonl --seeds 400-409 [--generators ...] [--alphas 1 0.4 auto]
    python3 benchmarks/auto_alpha.py table FILE.jsonl [...] [--alphas 1.0 0.4 auto]
    python3 benchmarks/auto_alpha.py probe --out /tmp/aa/probe.jsonl --seeds 400-403 --generators ...

One process, one registration at a time, torch limited to 1 thread (the machine is shared; OpenMP
workers spinning under contention made a 1 s run take 30 s). Each line of the JSONL file is one
registration: generator, seed, alpha, mean EPE (voxels, in the case's mask), folding, seconds and,
for alpha="auto", the per-level record (the alpha chosen and its evidence). Reruns skip the
(generator, seed, alpha) already in the file.

Seeds: 400-449 decided the rule (validation); 500-509 are the final check, run once after the rule
was fixed. The priors never see the test pair: they are each generator's own (other slices, other
layouts, the other patient, another slab), as in run.py / seeds.py; the "wrong prior" generators
pair a case with a prior of another modality pair, with its modalities swapped, or of another anatomy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as R  # noqa: E402
import seeds as S  # noqa: E402

os.environ["OMP_NUM_THREADS"] = "1"


# --------------------------------------------------------------------------- extra cases


def _c():
    import cases as C

    return C


_BRATS = {}


def _brats_volume(pid):
    import cases_more as CM

    if pid not in _BRATS:
        _BRATS[pid] = CM._brats(pid, 1)
    return _BRATS[pid]


def brats_2d(test="brats_2013_pat0005_1", prior="brats_2013_pat0006_1", seed=0, max_disp=6.0, sigma=12.0):
    """BraTS axial slice through the test patient's largest tumour section: T1c (fixed, deformed) <- FLAIR
    (moving), 1 mm. Prior: three axial slices of the OTHER patient (its tumour's largest section and 8 mm
    either side), aligned, new noise/bias."""
    C = _c()
    rng = np.random.default_rng(seed)
    t1c, flair, lab, brain = _brats_volume(test)
    z = int(np.argmax((lab > 0).sum((0, 1))))
    t1c, flair, lab, brain = t1c[:, :, z], flair[:, :, z], lab[:, :, z], brain[:, :, z]
    v = C.smooth_field(t1c.shape, sigma, max_disp, rng, brain)
    fixed = C.corrupt(C.pull(t1c, v), rng)
    moving = C.corrupt(flair, rng)
    mask = C.pull(brain.astype(float), v) > 0.5
    p_t1c, p_flair, p_lab, _ = _brats_volume(prior)
    zp = int(np.argmax((p_lab > 0).sum((0, 1))))
    tf = [C.corrupt(p_t1c[:, :, k], rng) for k in (zp - 8, zp, zp + 8)]
    tm = [C.corrupt(p_flair[:, :, k], rng) for k in (zp - 8, zp, zp + 8)]
    return dict(name=f"brats2d-{test[11:15]}", kind="2d-real", fixed=fixed, moving=moving, spacing=(1.0, 1.0),
                true_field=v, mask=mask, labels_fixed=None, labels_moving=None, prior_train=(tf, tm))


def brats_2d_nearby(seed=0, pid="brats_2013_pat0005_1", prior_z=range(40, 51), max_disp=6.0, sigma=12.0):
    """BraTS axial slice of one patient, T1c (fixed, deformed) <- FLAIR (moving), 1 mm, at z = 60 + 4 x (seed mod 10)
    (10-56 mm from the prior's slices). Prior: the SAME patient's aligned slices 40-50 (11 adjacent pairs, new
    noise/bias): they agree with one another, so their spread is small, but they show other anatomy."""
    C = _c()
    rng = np.random.default_rng(seed)
    t1c, flair, lab, brain = _brats_volume(pid)
    z = 60 + 4 * (seed % 10)
    v = C.smooth_field(t1c[:, :, z].shape, sigma, max_disp, rng, brain[:, :, z])
    fixed = C.corrupt(C.pull(t1c[:, :, z], v), rng)
    moving = C.corrupt(flair[:, :, z], rng)
    mask = C.pull(brain[:, :, z].astype(float), v) > 0.5
    tf = [C.corrupt(t1c[:, :, k], rng) for k in prior_z]
    tm = [C.corrupt(flair[:, :, k], rng) for k in prior_z]
    return dict(name=f"brats2d-nearby-z{z}", kind="2d-real", fixed=fixed, moving=moving, spacing=(1.0, 1.0),
                true_field=v, mask=mask, labels_fixed=None, labels_moving=None, prior_train=(tf, tm))


_PROSTATE = {}


def _prostate():
    if not _PROSTATE:
        import nibabel as nib

        d = os.path.join(_c().SHARED, "prostatex_mpmri", "ProstateX-0000")
        for k in ("adc", "hbv"):
            a = np.asarray(nib.load(os.path.join(d, f"{k}.nii.gz")).dataobj, dtype=np.float64)
            _PROSTATE[k] = a / np.percentile(a, 99.5)
    return _PROSTATE["adc"], _PROSTATE["hbv"]


def prostate_2d(seed=0, z=9, prior_z=(5, 13), max_disp=4.0, sigma=8.0):
    """ProstateX-0000 DWI slice: ADC (fixed, deformed) <- high-b (moving), 2 mm, 84 x 128. The two are
    voxel-aligned (one acquisition). Prior: two other slices of the same series (6 mm and more away),
    new noise/bias. One patient only here, so "other anatomy" rather than another subject."""
    from scipy import ndimage as ndi

    from priorreg.intensity import otsu_threshold

    C = _c()
    rng = np.random.default_rng(seed)
    adc, hbv = _prostate()
    a, b = adc[:, :, z], hbv[:, :, z]
    fg = ndi.binary_fill_holes(ndi.binary_opening(a > otsu_threshold(a), iterations=1))
    v = C.smooth_field(a.shape, sigma, max_disp, rng, fg)
    fixed = C.corrupt(C.pull(a, v), rng)
    moving = C.corrupt(b, rng)
    mask = C.pull(fg.astype(float), v) > 0.5
    tf = [C.corrupt(adc[:, :, k], rng) for k in prior_z]
    tm = [C.corrupt(hbv[:, :, k], rng) for k in prior_z]
    return dict(name="prostate-adc-hbv", kind="2d-real", fixed=fixed, moving=moving, spacing=(2.0, 2.0),
                true_field=v * 2.0, mask=mask, labels_fixed=None, labels_moving=None, prior_train=(tf, tm))


def with_prior_of(case, other, swap=False, name=None):
    """``case`` with the training pairs of ``other`` (another modality pair or anatomy); ``swap``: the
    prior's modalities the other way round (moving first)."""
    tf, tm = other["prior_train"]
    case = dict(case, prior_train=(tm, tf) if swap else (tf, tm))
    case["name"] = name or case["name"]
    return case


def _3d(fn, *a, **kw):
    import cases_more as CM

    return getattr(CM, fn)(*a, **kw)


GENERATORS = {
    # 2D MR, cross-subject or other-anatomy priors
    **{g: (lambda s, g=g: S.make_case(g, s)) for g in S.GENERATORS},
    "brats2d-5from6": lambda s: brats_2d("brats_2013_pat0005_1", "brats_2013_pat0006_1", seed=s),
    "brats2d-6from5": lambda s: brats_2d("brats_2013_pat0006_1", "brats_2013_pat0005_1", seed=s),
    "prostate-adc-hbv": lambda s: prostate_2d(seed=s),
    "brats2d-5-nearby-slices": lambda s: brats_2d_nearby(seed=s),
    # PET/SPECT with CT
    **{g: (lambda s, g=g: S.make_case(g, s)) for g in S.FUNCTIONAL_GENERATORS},
    # 3D at 2 mm (the spinal cord at 1 mm, 42 x 60 x 35)
    "brats3d-2mm-5from6": lambda s: _3d("brats_3d", 2, seed=s),
    "spine3d": lambda s: _3d("spine_3d", seed=s),
    "mni3d-2mm-t2": lambda s: _c().brain_3d("t2", seed=s),
    # the wrong prior: another modality pair, the modalities swapped, another anatomy
    "wrong-mni-t2-pdprior": lambda s: with_prior_of(S.make_case("mni-axial-t2", s), S.make_case("mni-axial-pd", s),
                                                    name="mni-axial-t2 with a T1/PD prior"),
    "wrong-mni-t2-swapped": lambda s: with_prior_of(S.make_case("mni-axial-t2", s), S.make_case("mni-axial-t2", s),
                                                    swap=True, name="mni-axial-t2 with its prior swapped"),
    "wrong-spect-thorax-brainprior": lambda s: with_prior_of(S.make_case("sim-spectct-thorax", s),
                                                             S.make_case("sim-spectct-brain", s),
                                                             name="sim-spectct-thorax with a brain SPECT/CT prior"),
    "wrong-brats2d-thoraxprior": lambda s: with_prior_of(brats_2d(seed=s), S.make_case("sim-petct-thorax", s),
                                                         name="brats2d with a thorax PET/CT prior"),
}
FUNCTIONAL = set(S.FUNCTIONAL_GENERATORS) | {"wrong-spect-thorax-brainprior"}


def setting(gen, case):
    s = R._setting(case)
    if gen in FUNCTIONAL:
        s.update(R.KIND_SETTINGS["sim-functional"])
    s["linear"] = "none"  # the cases have no linear offset; register_case runs the deformable stage alone
    return s


# --------------------------------------------------------------------------- one registration


def register_case(case, s, prior, alpha):
    """priorreg's pipeline on one case; (field, per-level auto records or None, seconds)."""
    import priorreg

    t = time.perf_counter()
    r = priorreg.register(case["fixed"], case["moving"], prior=prior, spacing=case["spacing"], warn=False,
                          **{**s, "alpha": alpha})
    records = r.prior_weights if alpha == "auto" else None
    return r.field, records, time.perf_counter() - t


def run(out, gens, seeds, alphas):
    import torch

    torch.set_num_threads(1)
    done = set()
    if os.path.exists(out):
        with open(out) as fh:
            for line in fh:
                d = json.loads(line)
                done.add((d["gen"], d["seed"], str(d["alpha"])))
    for gen in gens:
        for seed in seeds:
            todo = [a for a in alphas if (gen, seed, str(a)) not in done]
            if not todo:
                continue
            case = GENERATORS[gen](seed)
            s = setting(gen, case)
            prior = R.case_prior(case, s)
            for a in todo:
                field, records, sec = register_case(case, s, prior, a)
                m = R.metrics(case, field)
                row = dict(gen=gen, seed=seed, alpha=a, epe=m["epe_mean"], fold=m["fold_pct"], seconds=sec,
                           n_pairs=prior.n_pairs, records=records, pair_kl=_pair_kl(prior))
                with open(out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{gen} {seed} alpha={a}: {m['epe_mean']:.3f} ({sec:.1f} s)"
                      + ("" if records is None else " chose " + "/".join(f"{r['alpha']:.2f}" for r in records)),
                      flush=True)


def _pair_kl(prior):
    pk = getattr(prior, "pair_kl", None)
    return None if pk is None else np.asarray(pk, dtype=float).round(5).tolist()


# --------------------------------------------------------------------------- evidence tried and not adopted


def probe(out, gens, seeds, alpha=0.4):
    """At the coarsest level, from u = 0: run MI alone (alpha = 1) and the blend (``alpha``) and record the
    similarity (the alpha = 1 data terms, unfitted images) and KL to the prior at the start and at both ends.
    Tested: "the prior may move the solution only where the data are indifferent" (cost = similarity lost by
    the blend / similarity gained by MI alone) and "MI alone moves the pair towards the prior" (KL along the
    MI pass). Neither separated the cases where the prior helps (benchmarks/README.md)."""
    import torch

    from priorreg import checks, normalise, pyramid, spatial
    from priorreg import deformable as D
    from priorreg import prior_weight as PW
    from priorreg.solver import gradient_flow

    torch.set_num_threads(1)
    for gen in gens:
        for seed in seeds:
            case = GENERATORS[gen](seed)
            s = setting(gen, case)
            prior = R.case_prior(case, s)
            inp = checks.validate(case["fixed"], case["moving"], prior=prior, spacing=case["spacing"],
                                  overrides={**s, "alpha": alpha})
            pyr = normalise.normalise(inp)
            lv = s["levels"] - 1
            sp = pyramid.level_spacing(inp.fixed.spacing, lv)
            u = torch.zeros((inp.fixed.ndim, *pyr.fixed[lv].shape), dtype=inp.dtype)
            pts = D._sample_points(inp, pyr, lv)
            ff, mf, _ = D.fit_intensities(inp, pyr, lv, alpha, u, sp)
            d1, r1 = D.build_energy(D.Level(lv, pyr.fixed[lv], pyr.moving[lv], pyr.mask[lv], sp, 1.0, pts), inp, pyr)
            dp, rp = D.build_energy(D.Level(lv, ff, mf, pyr.mask[lv], sp, alpha, pts), inp, pyr)
            o, g = inp.options, inp.options.local_weight
            Q = D.prior_table(inp, lv)

            def sim(uu):
                v = {}
                for t in d1:
                    v.update(t.evaluate(uu, False)[0])
                return (1 - g) * v.get("-MI", 0.0) + g * v.get("-rMI", 0.0) + o.mind_weight * v.get("MIND", 0.0)

            def kl(uu):
                w = spatial.sample(mf, spatial.displaced_coords(uu, sp))
                return PW.pair_statistics(ff, w, Q, pyr.spec, pyr.mask[lv], seed=lv)["kl"]

            u1, _ = gradient_flow(d1, r1, u, o, lv, sp)
            up, _ = gradient_flow(dp, rp, u, o, lv, sp)
            row = dict(gen=gen, seed=seed, s0=sim(u), s1=sim(u1), sp=sim(up), k0=kl(u), k1=kl(u1), kp=kl(up))
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            cost = (row["sp"] - row["s1"]) / max(row["s0"] - row["s1"], 1e-12)
            print(f"{gen} {seed}: cost/gain {cost:.3f}, KL {row['k0']:.3f} -> MI alone {row['k1']:.3f}, blend {row['kp']:.3f}",
                  flush=True)


# --------------------------------------------------------------------------- summaries


def load(path):
    rows = {}
    with open(path) as fh:
        for line in fh:
            d = json.loads(line)
            rows[(d["gen"], d["seed"], str(d["alpha"]))] = d
    return rows


def _paired(a, b):
    """(mean of a - b, its standard error over the draws)."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def table(paths, alphas=("1.0", "0.4", "auto")):
    """The README table: mean EPE per generator and alpha, auto - alpha 1 and 0.4 - alpha 1 with their standard
    errors over the draws (the noise), and the alphas auto chose (median over the draws, coarsest level first)."""
    rows = {}
    for path in paths:
        rows.update(load(path))
    gens = list(dict.fromkeys(k[0] for k in rows))
    print("| generator | draws | " + " | ".join(f"alpha {a}" for a in alphas)
          + " | 0.4 - 1 (se) | auto - 1 (se) | alpha auto chose (coarse .. fine) |")
    print("|---" * (len(alphas) + 5) + "|")
    for g in gens:
        seeds = sorted({k[1] for k in rows if k[0] == g and all((g, k[1], a) in rows for a in alphas)})
        if not seeds:
            continue
        e = {a: np.array([rows[(g, s, a)]["epe"] for s in seeds]) for a in alphas}
        cells = [f"{e[a].mean():.3f}" for a in alphas]
        d4, s4 = _paired(e["0.4"], e["1.0"])
        da, sa = _paired(e["auto"], e["1.0"])
        recs = [rows[(g, s, "auto")]["records"] for s in seeds]
        n = max(len(r) for r in recs)  # none: the prior was set aside before the levels (the modality-order check)
        ch = np.array([[x["alpha"] for x in r] if r else [1.0] * n for r in recs])
        chosen = " / ".join(f"{v:.2f}" for v in np.median(ch, 0))
        print(f"| {g} | {len(seeds)} | " + " | ".join(cells) + f" | {d4:+.3f} ({s4:.3f}) | {da:+.3f} ({sa:.3f}) | {chosen} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", default="400-409")
    r.add_argument("--generators", nargs="*", default=None)
    r.add_argument("--alphas", nargs="*", default=["1.0", "0.4", "auto"])
    pr = sub.add_parser("probe")
    pr.add_argument("--out", required=True)
    pr.add_argument("--seeds", default="400-403")
    pr.add_argument("--generators", nargs="*", default=None)
    t = sub.add_parser("table")
    t.add_argument("paths", nargs="+")
    t.add_argument("--alphas", nargs="*", default=["1.0", "0.4", "auto"])
    a = p.parse_args(argv)
    if a.cmd == "run":
        alphas = [x if x == "auto" else float(x) for x in a.alphas]
        run(a.out, a.generators or list(GENERATORS), S.parse_seeds(a.seeds), alphas)
    elif a.cmd == "probe":
        probe(a.out, a.generators or list(GENERATORS), S.parse_seeds(a.seeds))
    else:
        table(a.paths, a.alphas)


if __name__ == "__main__":
    main()
