"""greedy, deformable only: -m NMI -n 100x50x10 -s 2.0vox 0.5vox, 2 threads (3D images); writes greedy's
warp (physical LPS mm, greedy's default saved precision) to OUT.

    python benchmarks/speed/greedy_d.py FIXED.nii.gz MOVING.nii.gz OUT.nii.gz
"""
import sys

from picsl_greedy import Greedy3D

fixed, moving, out = sys.argv[1:4]
Greedy3D().execute(f"-i {fixed} {moving} -m NMI -n 100x50x10 -s 2.0vox 0.5vox -threads 2 -V 0 -o {out}")
