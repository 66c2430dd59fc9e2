"""The mirror / axis-swap check (priorreg.mixups.mirror_notes) on right and wrong real pairs: for each pair,
the MI of the moving image as given and of its best mirrored or axis-permuted variant, blurred by each
given sigma (mm).

    PYTHONPATH=src python3 benchmarks/results/mirror-check/mirror_check.py 0.001,2,3,4 > rows.txt

Right pairs: the bundled BrainWeb slice (and a 180 x 180 crop), IXI T2/PD (and a 216 x 256 crop), BraTS
patients 5 and 6 FLAIR/T1c at 2 mm, ProstateX T2w/ADC and ADC/high-b, the spinal cord T1w/T2w (../shared/data).
Wrong ones: the moving arrays of those transposed, mirrored or turned 180 degrees with the header kept, and
the BraTS T1c at 2 mm with array axes 0 and 2 swapped or mirrored left-right.
"""
import sys
import types
import warnings
from importlib.resources import files

import numpy as np
import SimpleITK as sitk

from priorreg import io as pio
from priorreg import mixups as R
from priorreg.intensity import foreground

warnings.simplefilter("ignore")
D = "../shared/data/"


def at_2mm(path):
    img = sitk.ReadImage(path, sitk.sitkFloat32)
    size = [int(round(n * s / 2.0)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    img = sitk.Resample(sitk.SmoothingRecursiveGaussian(img, 1.0), size, sitk.Transform(), sitk.sitkLinear,
                        img.GetOrigin(), [2.0] * 3, img.GetDirection())
    return pio.sitk_to_image(img)


def cases():
    bw = files("priorreg") / "data" / "brainweb"
    f, m = (pio.read_image(bw / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    yield "brainweb", f, m, False
    fc, mc = f.with_array(f.array[20:200, :180].copy()), m.array[20:200, :180].copy()
    yield "brainweb-crop", fc, fc.with_array(mc), False
    for name, a in (("T", mc.T), ("180", mc[::-1, ::-1]), ("lr", mc[:, ::-1])):
        yield "brainweb-crop-" + name, fc, fc.with_array(np.ascontiguousarray(a)), True
    ixi = [pio.read_image(D + f"ixi_t2_pd_slice/IXI040-Guys-0724_{c}_slice69.nii.gz") for c in ("T2", "PD")]
    yield "ixi", ixi[0], ixi[1], False
    t2, pd = (x.with_array(np.ascontiguousarray(x.array[20:236])) for x in ixi)
    yield "ixi-crop", t2, pd, False
    for name, a in (("T", pd.array.T), ("flip0", pd.array[::-1]), ("flip1", pd.array[:, ::-1])):
        yield "ixi-crop-" + name, t2, pio.Image(np.ascontiguousarray(a), pd.spacing, pd.origin, pd.direction), True
    for pid in (5, 6):
        base = D + f"brats2013_deepmedic/brats_2013_pat000{pid}_1/"
        fl, t1c = at_2mm(base + "Flair_subtrMeanDivStd.nii.gz"), at_2mm(base + "T1c_subtrMeanDivStd.nii.gz")
        yield f"brats{pid}-2mm", fl, t1c, False
        if pid == 5:
            yield "brats5-2mm-swapped-0-2", fl, pio.Image(np.ascontiguousarray(t1c.array.transpose(2, 1, 0)), t1c.spacing,
                                                         t1c.origin, t1c.direction), True
            yield "brats5-2mm-mirrored-lr", fl, t1c.with_array(np.ascontiguousarray(t1c.array[:, :, ::-1])), True
    px = D + "prostatex_mpmri/ProstateX-0000/"
    yield "prostate-t2w-adc", pio.read_image(px + "t2w.nii.gz"), pio.read_image(px + "adc.nii.gz"), False
    yield "prostate-adc-hbv", pio.read_image(px + "adc.nii.gz"), pio.read_image(px + "hbv.nii.gz"), False
    sp = D + "sct_spine_errsm30/"
    yield "spine-t1w-t2w", pio.read_image(sp + "t1/t1w.nii.gz"), pio.read_image(sp + "t2/t2.nii.gz"), False


def main():
    all_cases = list(cases())
    for blur in [float(x) for x in sys.argv[1].split(",")]:
        R.MIRROR_BLUR_MM = blur
        print(f"blur {blur:g} mm (at most 1/50 of the fixed image's smallest extent)")
        for name, fixed, moving, wrong in all_cases:
            given, best, how = R.mirror_scores(fixed, moving, foreground(np.asarray(fixed.array)))
            said = R.mirror_notes(types.SimpleNamespace(fixed=fixed, moving=moving, linear=None),
                                  foreground(np.asarray(fixed.array)))
            print(f"  {name:24s} {'wrong' if wrong else 'right'} as given {given:.3f} best variant {best:.3f} "
                  f"ratio {best / given:5.2f} {'WARNED: ' + how if said else ''}", flush=True)


if __name__ == "__main__":
    main()
