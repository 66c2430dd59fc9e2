"""The unrelated-images check (priorreg.mixups.unrelated_notes): the registered pair's MI (32 bins, 16384 voxels of
the fixed anatomy) against that of the warped moving values shuffled, for real pairs registered with no flags
and for the bundled T1 against uniform noise.

    PYTHONPATH=src python3 benchmarks/results/mirror-check/unrelated.py > unrelated.txt
"""
import warnings
from importlib.resources import files

import numpy as np
import SimpleITK as sitk
import torch

import priorreg
from priorreg import io as pio
from priorreg.histogram import sample_mi, smoothing_matrix
from priorreg.intensity import foreground, intensity_range, normalize

warnings.simplefilter("ignore")
D = "../shared/data/"


def first_channel(path, out):
    img = sitk.ReadImage(path)
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = sitk.VectorIndexSelectionCast(img, 0)
    sitk.WriteImage(img, out)
    return out


def main():
    bw = files("priorreg") / "data" / "brainweb"
    t1 = pio.read_image(bw / "BrainT1Slice.png")
    noise = t1.with_array(np.random.default_rng(0).uniform(0, 255, t1.shape).astype(np.float32))
    pairs = [("uniform noise", t1, noise), ("brainweb", t1, pio.read_image(bw / "BrainProtonDensitySlice.png"))]
    for name, f, m in (("spine", "sct_spine_errsm30/t1/t1w.nii.gz", "sct_spine_errsm30/t2/t2.nii.gz"),
                       ("prostate-adc-hbv", "prostatex_mpmri/ProstateX-0000/adc.nii.gz", "prostatex_mpmri/ProstateX-0000/hbv.nii.gz"),
                       ("prostate-t2w-adc", "prostatex_mpmri/ProstateX-0000/t2w.nii.gz", "prostatex_mpmri/ProstateX-0000/adc.nii.gz")):
        pairs.append((name, pio.read_image(D + f), pio.read_image(D + m)))
    ct = first_channel(D + "fair_petct_thorax_slice/PET-CT-CT.jpg", "/tmp/petct_ct.png")
    pet = first_channel(D + "fair_petct_thorax_slice/PET-CT-PET.jpg", "/tmp/petct_pet.png")
    pairs.append(("petct (real slice)", pio.read_image(ct), pio.read_image(pet)))
    S = smoothing_matrix(32, 1.0)
    for name, fi, mo in pairs:
        r = priorreg.register(fi, mo, warn=False)
        region = foreground(np.asarray(fi.array))
        idx = np.flatnonzero(region)
        idx = idx[np.random.default_rng(0).choice(idx.size, min(idx.size, 2**14), replace=False)]
        at = np.unravel_index(idx, region.shape)
        fv = torch.as_tensor(normalize(np.asarray(fi.array)[at]))
        wv = torch.as_tensor(normalize(np.asarray(r.warped.array)[at]))
        ranges = (intensity_range([fv.numpy()]), intensity_range([wv.numpy()]))
        mi = sample_mi(fv, wv, ranges, S)
        null = np.mean([sample_mi(fv, wv[torch.randperm(len(wv), generator=torch.Generator().manual_seed(k))], ranges, S)
                        for k in range(3)])
        warned = any("share almost no information" in w for w in r.warnings)
        print(f"{name:20s} samples {len(idx)} registered MI {mi:.4f} shuffled {null:.4f} ratio {mi / null:6.1f}"
              f"{'  WARNED' if warned else ''}", flush=True)


if __name__ == "__main__":
    main()
