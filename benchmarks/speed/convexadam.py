"""ConvexAdam (MIND-SSC) with the package defaults, float32 on the CPU, 2 threads (3D only); writes the
displacement in voxels along the array axes (nibabel order, pull-back) as a 4D NIfTI to OUT.

    python benchmarks/speed/convexadam.py FIXED.nii.gz MOVING.nii.gz OUT.nii.gz
"""
import sys

import nibabel as nib
import numpy as np
import torch
from convexAdam.convex_adam_MIND import convex_adam_pt

fixed, moving, out = sys.argv[1:4]
torch.set_num_threads(2)
F = nib.load(fixed)
f, m = np.asarray(F.dataobj, np.float32), np.asarray(nib.load(moving).dataobj, np.float32)
disp = convex_adam_pt(f, m, dtype=torch.float32, device=torch.device("cpu"))
nib.save(nib.Nifti1Image(np.asarray(disp, np.float32), F.affine), out)
