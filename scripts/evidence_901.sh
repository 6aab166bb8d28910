#!/usr/bin/env bash
# The issue-12 evidence runs on Dataset901_Hippocampus (2d, CPU plan, batch 32), resumable: every step skips or
# resumes what is already there (the benchmark trains missing folds, continues interrupted ones with --c and
# only collects finished ones), so after an interruption run the same command again.
#
#   nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... ./scripts/evidence_901.sh [folds...]
#
# Steps (default folds 0 1 2 3 4):
#   1. the CPU plan (batch 32) if missing; nnU-Net's own planning and preprocessing must have run;
#   2. plain nnU-Net, 5 x 250 iterations per fold (nnUNetTrainerBaseline_5epochs): a stable baseline;
#   3. noise rates of the baseline segmentors: training batches vs validation cases (benchmarks/noise_rates.py);
#   4. HiDiff binary and real-valued, 20 x 25 iterations warm-started from each fold's baseline, with the residual
#      head (nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500, _real_w8_joint_bce1_res_cpuWarm500; the per-fold
#      decision is made on validation), with unaugmented refiner batches (_w8_joint_bce1_res_clean_cpuWarm500), and
#      with out-of-fold priors (_w8_joint_bce1_res_oof_cpuWarm500: needs the baselines of all 5 folds, skipped until
#      they exist);
#   5. HiDiff binary from scratch with the same 1750 iterations and the warm runs' configuration
#      (nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750; the paper's configuration is nnUNetTrainerHiDiff_cpu1750);
#   6. one collection of all five HiDiff trainers and the baseline into benchmark_results/Dataset901_Hippocampus_issue12/;
#   7. the sampler ablation with ε̂ reliability on the warm-started binary folds (benchmarks/sampler_ablation.py).
# On a 2-core machine run one training at a time: two nnU-Net trainings side by side took 600-740 s per 901 epoch
# each (2026-12-02), against about 160 s alone.
# Everything writes as it goes; the CSVs, summaries and JSON files are what the README's tables are built from.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${nnUNet_raw:?set nnUNet_raw}" "${nnUNet_preprocessed:?set nnUNet_preprocessed}" "${nnUNet_results:?set nnUNet_results}"
FOLDS=("${@:-0 1 2 3 4}")
read -r -a FOLDS <<< "${FOLDS[*]}"
BIN="${VIRTUAL_ENV:-$PWD/.venv}/bin"
export nnUNet_extTrainer="$PWD/trainers" nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
PLANS=nnUNetPlans_hidiffCPU
OUT=benchmark_results/Dataset901_Hippocampus_issue12
BASE=nnUNetTrainerBaseline_5epochs
SEG="$nnUNet_results/Dataset901_Hippocampus/${BASE}__${PLANS}__2d/fold_{fold}/checkpoint_final.pth"
mkdir -p "$OUT"
step() { echo "[evidence $(date +%H:%M:%S)] $*"; }

if [ ! -f "$nnUNet_preprocessed/Dataset901_Hippocampus/$PLANS.json" ]; then
  step "CPU plan"
  "$BIN/nnunetv2_hidiff_plan" --preset plans/presets/Dataset901_Hippocampus_cpu.json
fi
step "baseline $BASE, folds ${FOLDS[*]}"
"$BIN/nnunetv2_hidiff_benchmark" -d 901 -p "$PLANS" -np 1 --folds "${FOLDS[@]}" --trainers "$BASE" \
  -o "$OUT/baseline_only"
step "noise rates of the baseline segmentors"
"$BIN/python" benchmarks/noise_rates.py -d 901 -p "$PLANS" -tr nnUNetTrainerHiDiff_cpuWarm500 --folds "${FOLDS[@]}" \
  --cases 8 --batches 20 --segmentor-checkpoint "$SEG" --temperature-max 1 2 3 --logit-noise 0 0.5 1 \
  --json "$OUT/noise_rates.json" | tee "$OUT/noise_rates.txt"
step "HiDiff warm-started from the baselines"
nnUNet_HiDiff_pretrained_segmentor="$SEG" "$BIN/nnunetv2_hidiff_benchmark" -d 901 -p "$PLANS" -np 1 \
  --allow-unequal-budgets --folds "${FOLDS[@]}" \
  --trainers "$BASE" nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500 \
  nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500 -o "$OUT/warm"
if [ "$(ls "$nnUNet_results"/Dataset901_Hippocampus/${BASE}__${PLANS}__2d/fold_{0,1,2,3,4}/checkpoint_final.pth \
        2>/dev/null | wc -l)" -eq 5 ]; then
  step "HiDiff with out-of-fold priors"
  nnUNet_HiDiff_pretrained_segmentor="$SEG" "$BIN/nnunetv2_hidiff_benchmark" -d 901 -p "$PLANS" -np 1 \
    --allow-unequal-budgets --folds "${FOLDS[@]}" \
    --trainers "$BASE" nnUNetTrainerHiDiff_w8_joint_bce1_res_oof_cpuWarm500 -o "$OUT/warm_oof"
else
  step "out-of-fold priors skipped: they need the baselines of all 5 folds (run this script for folds 0-4)"
fi
step "HiDiff from scratch, 1750 iterations"
env -u nnUNet_HiDiff_pretrained_segmentor "$BIN/nnunetv2_hidiff_benchmark" -d 901 -p "$PLANS" -np 1 \
  --allow-unequal-budgets --folds "${FOLDS[@]}" --trainers "$BASE" nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750 -o "$OUT/scratch"
step "collection of all trainers"
"$BIN/nnunetv2_hidiff_benchmark" -d 901 -p "$PLANS" -np 1 --allow-unequal-budgets --collect-only \
  --folds "${FOLDS[@]}" -o "$OUT" \
  --trainers "$BASE" nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 \
  nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500 nnUNetTrainerHiDiff_w8_joint_bce1_res_oof_cpuWarm500 \
  nnUNetTrainerHiDiff_w8_joint_bce1_res_clean_cpuWarm500 nnUNetTrainerHiDiff_w8_joint_bce1_res_cpu1750
step "sampler ablation"
"$BIN/python" benchmarks/sampler_ablation.py -d 901 -p "$PLANS" -tr nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 \
  --folds "${FOLDS[@]}" --cases 8 --hd95 --json "$OUT/sampler_ablation.json" | tee "$OUT/sampler_ablation.txt"
step "done: $OUT"
