"""Does a mask change how well priorreg aligns? (found in a new-user pass, 2026-12-05)

BraTS 2013 pat0005 (CC BY-NC-SA, ../shared/data): FLAIR fixed; T1c moving, moved by a known rigid map
(6 degrees about the axis (1, 2, 3), (5, -4, 3) mm, about the grid centre). The truth is that map, so
the error of a field is measured exactly at every 7th voxel of the brain mask. Runs
`priorreg register FIXED MOVING` with no engine flags, with and without `--mask brainmask.nii.gz`
(and with `--max-iterations 0`: the linear stage alone), at 2 mm and at 1 mm.

    python3 benchmarks/mask_check.py [--mm 2 1] [--work /tmp/mask_check]
"""
from __future__ import annotations

import argparse
import os
import subprocess

import numpy as np
import SimpleITK as sitk

from case_tools import SHARED
from cases_linear import rotation_matrix

PATIENT = os.path.join(SHARED, "brats2013_deepmedic", "brats_2013_pat0005_1")


def _read(name, mm, like=None, nearest=False):
    im = sitk.ReadImage(os.path.join(PATIENT, name), sitk.sitkUInt8 if nearest else sitk.sitkFloat32)
    if mm == 1:
        return im
    if nearest:
        return sitk.Resample(im, like, sitk.Transform(), sitk.sitkNearestNeighbor)
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(im, mm / 2), [int(mm)] * 3)


def write_case(mm, work):
    """Files of the case and (points, their true moving points) in world mm."""
    fixed = _read("Flair_subtrMeanDivStd.nii.gz", mm)
    t1c = _read("T1c_subtrMeanDivStd.nii.gz", mm)
    brain = _read("brainmask.nii.gz", mm, like=fixed, nearest=True)
    rigid = sitk.AffineTransform(3)
    rigid.SetMatrix(rotation_matrix(6.0, (1.0, 2.0, 3.0)).ravel().tolist())
    rigid.SetTranslation((5.0, -4.0, 3.0))
    rigid.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    moving = sitk.Resample(t1c, fixed, rigid, sitk.sitkBSpline, 0.0)  # moving(y) = T1c(rigid(y))
    paths = {k: os.path.join(work, f"{mm}mm_{k}.nii.gz") for k in ("fixed", "moving", "mask")}
    for k, im in zip(paths, (fixed, moving, brain)):
        sitk.WriteImage(im, paths[k])
    idx = np.argwhere(sitk.GetArrayFromImage(brain) > 0)[::7, ::-1]
    pts = np.array([fixed.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in idx])
    inverse = rigid.GetInverse()  # fixed point x shows in the moving image at rigid^-1(x)
    return paths, pts, np.array([inverse.TransformPoint(p.tolist()) for p in pts])


def error_mm(field_path, pts, truth):
    tx = sitk.DisplacementFieldTransform(sitk.ReadImage(field_path, sitk.sitkVectorFloat64))
    e = np.linalg.norm(np.array([tx.TransformPoint(p.tolist()) for p in pts]) - truth, axis=1)
    return e.mean(), np.percentile(e, 95), e.max()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mm", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--work", default="/tmp/mask_check")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    print("| spacing | run | mean error mm | p95 | max |\n|---|---|---|---|---|")
    for mm in a.mm:
        paths, pts, truth = write_case(mm, a.work)
        runs = {"no mask": [], "brain mask": ["--mask", paths["mask"]],
                "linear only, no mask": ["--max-iterations", "0"],
                "linear only, brain mask": ["--max-iterations", "0", "--mask", paths["mask"]]}
        for i, (name, extra) in enumerate(runs.items()):
            out = os.path.join(a.work, f"{mm}mm_run{i}")
            subprocess.run(["priorreg", "register", paths["fixed"], paths["moving"], "--out", out, "--overwrite",
                            "--quiet", *extra], check=True)
            m, p95, mx = error_mm(os.path.join(out, "field.nii.gz"), pts, truth)
            print(f"| {mm} mm | {name} | {m:.3f} | {p95:.3f} | {mx:.3f} |", flush=True)


if __name__ == "__main__":
    main()
