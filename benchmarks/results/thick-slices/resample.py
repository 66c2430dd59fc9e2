"""BraTS pat0005 FLAIR, T1c and brain mask resampled (linear, no blur) to the spacing given, mm: in/{fl,t1,bm}_TAG.nii.gz.

    python3 resample.py 2 2 4 a224
"""
import os
import sys

import SimpleITK as sitk

D = os.path.join(os.path.dirname(__file__), "../../../../shared/data/brats2013_deepmedic/brats_2013_pat0005_1/")
sp, tag = tuple(float(x) for x in sys.argv[1:4]), sys.argv[4]
os.makedirs("in", exist_ok=True)
for name, f in [("fl", "Flair_subtrMeanDivStd"), ("t1", "T1c_subtrMeanDivStd"), ("bm", "brainmask")]:
    im = sitk.ReadImage(D + f + ".nii.gz", sitk.sitkFloat32)
    sz = [int(round(s * o / n)) for s, o, n in zip(im.GetSize(), im.GetSpacing(), sp)]
    o = sitk.Resample(im, sz, sitk.Transform(), sitk.sitkLinear, im.GetOrigin(), sp, im.GetDirection(), 0.0, sitk.sitkFloat32)
    if name == "bm":
        o = sitk.BinaryThreshold(o, 0.5, 1e9, 1, 0)
    sitk.WriteImage(o, f"in/{name}_{tag}.nii.gz")
