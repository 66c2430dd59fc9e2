"""Defaults (register(fixed, moving, spacing=...), the functional preset for the functional kinds) on
validation seeds; prints one JSON row per draw: EPE (voxels, mask), iterations, seconds (1 thread, on a
shared machine: the seconds are not a speed figure).

    git worktree add /tmp/oldtree 161699c        # the code before the solver change
    PYTHONPATH=/tmp/oldtree/src python3 benchmarks/results/solver-steps/check.py old GENS SEEDS >> rows.jsonl
    PYTHONPATH=src python3 benchmarks/results/solver-steps/check.py new GENS SEEDS >> rows.jsonl
    python3 benchmarks/results/solver-steps/compare.py

GENS: mni-axial-t2,brainweb-t1-pd,ixi-t2-pd,mni-sagittal-pd with seeds 300,301,302; sim-petct-thorax and
sim-spectct-thorax with 300-306 (spect: 301-306); mni3d-2mm-t2,brats3d-2mm-flair-t1c,spine3d with 300-302.
"""
import sys, os, json, time, warnings
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, "benchmarks")
import seeds as S, run as R, cases_more as CM
import torch
torch.set_num_threads(1)
import priorreg
warnings.simplefilter("ignore")
tag = sys.argv[1]
gens = sys.argv[2].split(",")
seeds = [int(s) for s in sys.argv[3].split(",")]
for g in gens:
    for s in seeds:
        case = (CM.spine_3d(seed=s) if g == "spine3d" else CM.brats_3d(1, seed=s) if g == "brats3d-1mm"
                else S.make_case(g, s))
        preset = "functional" if "pet" in g or "spect" in g else None
        t = time.perf_counter()
        r = priorreg.register(case["fixed"], case["moving"], spacing=case["spacing"], preset=preset, warn=False)
        sec = time.perf_counter() - t
        e = float(R.epe_map(case, r.field)[case["mask"]].mean())
        print(json.dumps(dict(tag=tag, gen=g, seed=s, epe=e, its=[h.iterations for h in r.history], s=round(sec, 2))), flush=True)
