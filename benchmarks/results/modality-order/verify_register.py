"""Cross-check: the (kl_given, kl_swapped) that priorreg.register() itself computes (recorded by wrapping
prior_warnings.modality_order_check) against order_check.py's replicated pipeline, on a few cases."""
import os, sys, json, warnings
os.environ["PRIORREG_THREADS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import order_check as O
import torch
torch.set_num_threads(1)
import priorreg
import priorreg.prior_warnings as PW

seen = []
_orig = PW.modality_order_check
def rec(*a, **k):
    out = _orig(*a, **k); seen.append(out); return out
PW.modality_order_check = rec

def run(name, fixed, moving, spacing, s, tr_f, tr_m):
    fp = dict(bins=s["bins"], parzen_sigma=s["parzen_sigma"], levels=s["levels"])
    for tag, prior in (("right", priorreg.fit_prior(tr_f, tr_m, **fp)), ("swapped", priorreg.fit_prior(tr_m, tr_f, **fp))):
        seen.clear()
        over = dict(s, max_iterations=1)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = priorreg.register(fixed, moving, prior=prior, spacing=spacing, **over)
        fired = [str(x.message)[:90] for x in w if "swapped" in str(x.message)]
        print(f"{name:30s} {tag:8s} register(): kl_given={seen[0][0]:.4f} kl_swapped={seen[0][1]:.4f} warned={bool(fired)} {fired}", flush=True)

for name in ("mni-axial-t2", "mni-axial-pd", "brainweb-t1-pd-offset", "petct-real"):
    case = O.C.CASES[name]()
    s = O.R._setting(case)
    run(name, case["fixed"], case["moving"], case["spacing"], s, *case["prior_train"])
rd = O._brats_2mm
run("user-brats-2mm", rd("T1c0006_2mm.nii.gz"), rd("Flair0006_2mm.nii.gz"), None, O.R.preset_settings("mr", 3),
    [rd("T1c0005_2mm.nii.gz")], [rd("Flair0005_2mm.nii.gz")])
