"""The modality-order check on 2D BraTS FLAIR/T1c slices (benchmarks/auto_alpha.py generators), right-order and
swapped priors, seeds 400-409: raw KLs (modality_order_check) and KLs after each orientation's own intensity fit
(as calibration.swapped_after_fit). Output: fitted-slices.txt.

    python3 benchmarks/results/modality-order/fitted_slices.py brats2d-5-nearby-slices
"""
import sys; sys.path.insert(0,'benchmarks')
import auto_alpha as A, run as R, torch
from priorreg.checks import validate
from priorreg.normalise import normalise
from priorreg.deformable import prior_table
from priorreg.calibration import modality_order_check, fit_intensity_maps
torch.set_num_threads(1)
gen=sys.argv[1]
for seed in range(400,410):
    case=A.GENERATORS[gen](seed)
    s=A.setting(gen,case)
    for name,c in (("right",case),("swapped",A.with_prior_of(case,case,swap=True))):
        pr=R.case_prior(c,s)
        inp=validate(c['fixed'],c['moving'],prior=pr,spacing=c['spacing'],overrides={**s,'alpha':'auto'})
        pyr=normalise(inp)
        Q=prior_table(inp,0)
        g,sw=modality_order_check(pyr.fixed[0],pyr.moving[0],Q,pyr.spec,pyr.mask[0])
        fg=fit_intensity_maps(pyr.fixed[0],pyr.moving[0],Q,pyr.spec,pyr.mask[0], min_gain=0.0)[3]
        fs=fit_intensity_maps(pyr.moving[0],pyr.fixed[0],Q,pyr.spec,pyr.mask[0], min_gain=0.0)[3]
        print(gen,seed,name,f"raw {g:.2f}/{sw:.2f} ratio {sw/g:.2f}  fitted {fg:.2f}/{fs:.2f} ratio {fs/fg:.2f}",flush=True)
