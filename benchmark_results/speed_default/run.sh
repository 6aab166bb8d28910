#!/bin/bash
# issue 14 speed table: one run, quiet machine (no training running), 2 threads
# needs nnUNet_raw (the DRIVE test images, 901 imagesTr) and the package installed; run from anywhere
cd "$(dirname "$0")/../.."
O=${O:-benchmark_results/speed_default}
set -x
date
python benchmarks/cost_ratios.py --datasets 901 902 --train-datasets 901 --batch 32 --threads 2 --repeats 5 \
  --trainers nnUNetTrainerHiDiff nnUNetTrainerHiDiff_realRefiner nnUNetTrainerHiDiff_paper \
  --json $O/cost_901train_patches.json > $O/cost_901train_patches.txt 2>&1
date
python benchmarks/cost_ratios.py --datasets 902 --train-datasets 902 --train-patch 902=256x256 --batch 4 --threads 2 --repeats 5 \
  --trainers nnUNetTrainerHiDiff nnUNetTrainerHiDiff_realRefiner \
  --json $O/cost_902train.json > $O/cost_902train.txt 2>&1
date
python benchmarks/cost_ratios.py --datasets 902 --train-datasets --threads 2 --repeats 3 --steps 1 2 5 10 --samples 1 4 \
  --trainers nnUNetTrainerHiDiff --json $O/scaling_902.json > $O/scaling_902.txt 2>&1
date
python benchmarks/predict_speed.py --dataset 902 --cases 4 --threads 2 > $O/predict_902_tta.txt 2>&1
date
python benchmarks/predict_speed.py --dataset 901 --images $nnUNet_raw/Dataset901_Hippocampus/imagesTr --cases 10 --threads 2 > $O/predict_901_tta.txt 2>&1
date
python benchmarks/packed_speed.py --dataset 902 --trainer nnUNetTrainerHiDiff --threads 2 --repeats 3 > $O/packed_902_640_w8.txt 2>&1
date
