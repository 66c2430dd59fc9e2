"""NiftyReg reg_f3d with its defaults (NMI 64 bins, 5-voxel grid, 3 levels), 2 OpenMP threads; writes the
dense displacement field (reg_transform -disp: world RAS mm, NiftyReg's 5D layout) to OUT.

    python benchmarks/speed/niftyreg_f3d.py FIXED.nii.gz MOVING.nii.gz OUT.nii.gz
"""
import os
import subprocess
import sys
import tempfile

import niftyreg

fixed, moving, out = sys.argv[1:4]
tmp = tempfile.mkdtemp(prefix="nr_speed_")
cpp = os.path.join(tmp, "cpp.nii")
run = lambda tool, *a: subprocess.run([os.path.join(niftyreg.bin_path, tool), *a], check=True,  # noqa: E731
                                      stdout=subprocess.DEVNULL)
run("reg_f3d", "-ref", fixed, "-flo", moving, "-cpp", cpp, "-res", os.path.join(tmp, "res.nii"), "-omp", "2")
run("reg_transform", "-ref", fixed, "-disp", cpp, out, "-omp", "2")
