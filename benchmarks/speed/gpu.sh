#!/bin/bash
# CUDA check, run from the repository root on a machine with an NVIDIA GPU:
#     bash benchmarks/speed/gpu.sh CASEDIR OUTDIR
# CASEDIR holds mni3d-2mm-t2_{fixed,moving}.nii.gz (benchmarks/speed/write_cases.py). It runs the
# test suite (the CUDA tests included), then `priorreg register` with no engine flags, whole
# process, on the GPU and on the CPU: the 2D demo pair, MNI 3D at 2 mm and the same pair
# resampled to 1 mm. Each run's wall time and report.json figures are printed. TESTS="..." narrows
# the test run (default: the whole suite; its whole log is kept in OUTDIR/tests.log); RUNS=0 skips the
# whole-process runs.
set -u
cases=$1; out=$2
mkdir -p "$out"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'threads', torch.get_num_threads())"

echo "== tests ${TESTS:-tests}"
timeout 300 python3 -X faulthandler -m pytest -q -p no:cacheprovider ${TESTS:-tests} > "$out/tests.log" 2>&1
echo "exit $?"; grep -n -m 5 -A 12 "Fatal Python error" "$out/tests.log"; tail -25 "$out/tests.log"
echo "== CPU / CUDA agreement"
PYTHONPATH=$PYTHONPATH:$PWD/tests timeout 120 python3 benchmarks/speed/cuda_agree.py

echo "== cases"
python3 - "$cases" "$out/cases" <<'EOF'
import os, sys
import SimpleITK as sitk
src, dst = sys.argv[1:]
os.makedirs(dst, exist_ok=True)
for key in ("fixed", "moving"):
    img = sitk.ReadImage(f"{src}/mni3d-2mm-t2_{key}.nii.gz", sitk.sitkFloat32)
    sitk.WriteImage(img, f"{dst}/mni3d-2mm-t2_{key}.nii.gz")
    size = [2 * s for s in img.GetSize()]
    up = sitk.Resample(img, size, sitk.Transform(), sitk.sitkBSpline, img.GetOrigin(), (1.0, 1.0, 1.0),
                       img.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(up, f"{dst}/mni3d-1mm-t2_{key}.nii.gz")
EOF
python3 -m priorreg demo --out "$out/demo" --device cpu > /dev/null
echo "== where the time goes: MNI 1 mm on CUDA, whole process (cProfile, cumulative seconds)"
python3 -m cProfile -o "$out/1mm.prof" -m priorreg register "$out/cases/mni3d-1mm-t2_fixed.nii.gz" \
    "$out/cases/mni3d-1mm-t2_moving.nii.gz" --out "$out/prof" --device cuda --overwrite --quiet
python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('cumtime').print_stats('priorreg/', 30)" \
    "$out/1mm.prof" | grep -v '^$' | tail -32

summary() {  # $1 = output folder
    python3 - "$1/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lv = [(l.get("shape"), l.get("iterations"), round(l.get("seconds", 0), 2)) for l in r.get("levels", [])]
print(f"   device {r['device']}  register() {r['seconds']:.2f} s  levels {lv}")
EOF
}
run() {  # $1 = label, $2 = device, rest = fixed moving
    label=$1; dev=$2; shift 2
    o="$out/run-$label-$dev"
    local t0=$EPOCHREALTIME
    timeout 150 python3 -m priorreg register "$@" --out "$o" --device "$dev" --overwrite > "$o.log" 2>&1
    local t1=$EPOCHREALTIME
    python3 -c "print('   wall %.2f s' % ($t1 - $t0))" > "$o.time"
    echo "$label $dev: $(tail -1 "$o.log")"; cat "$o.time"; summary "$o"
}
[ "${RUNS:-1}" = 0 ] && exit 0
echo "== whole process, no engine flags"
d=$out/demo
for dev in cuda cpu cuda; do
    run 2d-demo $dev "$d/fixed_T1.nii.gz" "$d/moving_PD_deformed.nii.gz"
done
for c in mni3d-2mm-t2 mni3d-1mm-t2; do
    for dev in cuda cpu cuda; do
        run $c $dev "$out/cases/${c}_fixed.nii.gz" "$out/cases/${c}_moving.nii.gz"
    done
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
