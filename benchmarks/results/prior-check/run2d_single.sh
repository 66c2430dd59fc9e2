#!/bin/bash
# 2D cases with ONE training pair (auto then uses its conservative alpha >= 0.7)
cd .
S="0 1 2 3"
python3 slices2d.py brats --pat 6 --test 90 --train 60 --seeds $S --out res2d_single_b6_t90.json
python3 slices2d.py brats --pat 6 --test 90 --train-pat 5 --train 90 --seeds $S --out res2d_single_b6_t90_from5.json
python3 slices2d.py prostate --test 9 --train 5 --seeds $S --out res2d_single_px_t9.json
