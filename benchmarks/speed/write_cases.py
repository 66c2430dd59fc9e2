"""Write the fixed and moving images of the 3D speed cases to NIfTI in DIR:
mni3d-2mm-t2_{fixed,moving}.nii.gz and brats3d-1mm-flair-t1c_{fixed,moving}.nii.gz
(array axes as i, j, k, affine diag(spacing): the same headers peers.py gives NiftyReg).

    python benchmarks/speed/write_cases.py DIR [CASE ...]
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import cases as C  # noqa: E402
import peers  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name in sys.argv[2:] or ("mni3d-2mm-t2", "brats3d-1mm-flair-t1c"):
    case = C.CASES[name]()
    for key in ("fixed", "moving"):
        print(peers._nii(os.path.join(out, f"{name}_{key}.nii.gz"), case[key], case["spacing"]))
