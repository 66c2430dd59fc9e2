#!/bin/sh
# The new-user pass's thick-slice case: the whole BraTS head resampled to 2 x 2 x 4 and 1 x 1 x 4 mm, the T1c
# warped by sine waves (amplitude 3 mm in plane, 1 mm through the slices, wavelength 60 mm, seed 7), FLAIR
# fixed. Run in an empty folder; PYTHONPATH chooses the priorreg checkout. Prints EPE (mm) in the brain mask.
set -e
H=$(dirname "$0")
for s in "2 2 4 a224" "1 1 4 a114"; do
  set -- $s; tag=$4
  python3 "$H/resample.py" $1 $2 $3 $tag
  python3 "$H/sine_warp.py" in/t1_$tag.nii.gz in/t1_${tag}_def.nii.gz in/u_$tag.npy 3 60 7 1
  for lv in default 1; do
    if [ $lv = default ]; then extra=""; else extra="--levels $lv"; fi
    priorreg register in/fl_$tag.nii.gz in/t1_${tag}_def.nii.gz --out r_${tag}_$lv --overwrite --quiet $extra
    echo "$tag levels=$lv: $(python3 "$H/epe_from_run.py" r_${tag}_$lv in/u_$tag.npy in/bm_$tag.nii.gz)"
  done
done
