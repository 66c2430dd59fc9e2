"""greedy as a user runs it on a pair not known to be aligned: affine (-a -dof 12 -m NMI -n 100x50x10
-ia-image-centers), then deformable (-m NMI -n 100x50x10 -s 2.0vox 0.5vox) from it, then the moving image
resliced through both (the warped image priorreg also writes); 2 threads, 3D images. Writes OUT (greedy's warp,
physical LPS mm), OUT's folder/affine.mat and OUT's folder/warped.nii.gz.

    python benchmarks/speed/greedy_ad.py FIXED.nii.gz MOVING.nii.gz OUT.nii.gz
"""
import os
import sys

from picsl_greedy import Greedy3D

fixed, moving, out = sys.argv[1:4]
folder = os.path.dirname(os.path.abspath(out))
aff, warped = os.path.join(folder, "affine.mat"), os.path.join(folder, "warped.nii.gz")
common = f"-i {fixed} {moving} -m NMI -n 100x50x10 -threads 2 -V 0"
Greedy3D().execute(f"{common} -a -dof 12 -ia-image-centers -o {aff}")
Greedy3D().execute(f"{common} -s 2.0vox 0.5vox -it {aff} -o {out}")
Greedy3D().execute(f"-rf {fixed} -rm {moving} {warped} -r {out} {aff} -threads 2")
