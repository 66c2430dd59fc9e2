import json, sys, time
sys.path.insert(0, "/work/main/benchmarks")
import run as R
import numpy as np, torch
torch.set_num_threads(2)
import priorreg, cases as C
from priorreg.transform import linear_to_field
from priorreg.image import as_image
for name in sys.argv[1:]:
    case = C.CASES[name]()
    s = R._setting(case)
    r = priorreg.register(case["fixed"], case["moving"], alpha=1.0, spacing=case["spacing"], **s)
    init = linear_to_field(r.linear, as_image(case["fixed"], "fixed", "probe", spacing=case["spacing"]))
    s2 = dict(s, linear="none")
    r2 = priorreg.register(case["fixed"], case["moving"], alpha=1.0, spacing=case["spacing"], initial_field=init, **s2)
    for lab, f in (("affine (moving resampled, then deformable)", r.field), ("linear none + initial_field = the same linear transform", r2.field), ("the linear transform alone", init)):
        print(json.dumps(dict(case=name, variant=lab, epe=R.metrics(case, f)["epe_mean"])), flush=True)
