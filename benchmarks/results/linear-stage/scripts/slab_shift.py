"""The cord slab (cases_more.spine_3d: T1w fixed under a 4 mm smooth warp, T2w moving) with the moving image's
origin moved SHIFT mm along its array axis AXIS (2: along the cord); the truth is the warp plus that shift. Mean
error (mm) in the cord + 2 voxels: none, the linear stage alone, the default.

    python3 benchmarks/results/linear-stage/scripts/slab_shift.py 10 2 1,2,3,4,5 > slid-off/z-new.jsonl
"""
import os, sys, numpy as np, warnings, json
warnings.simplefilter("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import cases_more as CM
import priorreg
shift = float(sys.argv[1]); axis = int(sys.argv[2])
for seed in [int(s) for s in sys.argv[3].split(",")]:
    c = CM.spine_3d(seed=seed)
    f = priorreg.Image(c["fixed"], c["spacing"])
    A, b = f.index_to_world()
    off = np.zeros(3); off[axis] = -shift  # moving array index i sits at world A i + b - shift e_axis ...
    m = priorreg.Image(c["moving"], c["spacing"], tuple(b + A @ off))
    # fixed x <-> moving index x + v(x); its world point: A(x + v) + b - A shift e  -> displacement (array axes) v - shift e
    truth = c["true_field"].copy(); truth[axis] -= shift
    mask = c["mask"]
    r = priorreg.register(f, m, warn=False)
    lin = priorreg.register(f, m, warn=False, max_iterations=0)
    e = lambda u: float(np.linalg.norm(np.asarray(u) - truth, axis=0)[mask].mean())
    print(json.dumps(dict(seed=seed, shift=shift, axis=axis, none=e(np.zeros_like(truth)), linear=e(lin.field), default=e(r.field), warnings=[w[:60] for w in r.warnings])), flush=True)
