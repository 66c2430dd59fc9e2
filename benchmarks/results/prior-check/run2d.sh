#!/bin/bash
# 2D cases, sequential
cd .
S="0 1 2 3"
python3 slices2d.py brats --pat 6 --test 90 --train 55 65 --seeds $S --out res2d_b6_t90.json
python3 slices2d.py brats --pat 5 --test 90 --train 55 65 --seeds $S --out res2d_b5_t90.json
python3 slices2d.py brats --pat 6 --test 60 --train 95 105 --seeds $S --max 6 --shift --out res2d_b6_t60s.json
python3 slices2d.py brats --pat 6 --test 90 --train-pat 5 --train 85 95 --seeds $S --out res2d_b6_t90_from5.json
python3 slices2d.py prostate --test 9 --train 4 5 13 14 --seeds $S --out res2d_px_t9.json
python3 slices2d.py prostate --test 9 --train 4 5 13 14 --seeds $S --max 6 --shift --out res2d_px_t9s.json
