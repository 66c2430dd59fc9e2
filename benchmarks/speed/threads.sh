#!/bin/bash
# CPU thread scaling of `priorreg register` (no engine flags) on a many-core machine:
#     bash benchmarks/speed/threads.sh CASEDIR OUTDIR "1 2 4 16"
# CASEDIR as for gpu.sh (mni3d-2mm-t2_{fixed,moving}.nii.gz). The 2D pair is the demo's. Prints the
# register() seconds of report.json and the whole process's wall time per thread count.
set -u
cases=$1; out=$2; counts=${3:-"1 2 4 8 16"}
mkdir -p "$out"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
python3 -m priorreg demo --out "$out/demo" --device cpu --quiet > /dev/null
for label in 2d mni3d-2mm; do
    if [ $label = 2d ]; then f="$out/demo/fixed_T1.nii.gz"; m="$out/demo/moving_PD_deformed.nii.gz"
    else f="$cases/mni3d-2mm-t2_fixed.nii.gz"; m="$cases/mni3d-2mm-t2_moving.nii.gz"; fi
    for t in $counts; do
        t0=$EPOCHREALTIME
        PRIORREG_THREADS=$t timeout 120 python3 -m priorreg register "$f" "$m" --out "$out/r" --overwrite --quiet
        t1=$EPOCHREALTIME
        python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(f'$label threads $t: register() {r[\"seconds\"]:.2f} s, whole process %.2f s' % ($t1 - $t0))" "$out/r/report.json"
    done
done
