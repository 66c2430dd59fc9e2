#!/bin/bash
# all 3D BraTS configurations, sequential (2 cores)
cd .
for cfg in "single4::" "split4:--split:" "single6s::--max 6 --shift" "split6s:--split:--max 6 --shift"; do
  name=${cfg%%:*}; rest=${cfg#*:}; f1=${rest%%:*}; f2=${rest#*:}
  for p in "6 5" "5 6"; do
    set -- $p
    python3 brats3d.py $1 $2 0 1 2 3 4 5 $f1 $f2 --out res3d_${name}_test$1.json
  done
done
