#!/usr/bin/env bash
# The issue-12 evidence runs on Dataset902_DRIVE (2d, CPU plan: the paper's 256x256 crops, batch 4), resumable: every
# step skips or resumes what is already there (the benchmark trains missing folds, continues interrupted ones with
# --c and only collects finished ones), so after an interruption run the same command again.
#
#   nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... ./scripts/evidence_902.sh [folds...]
#
# Steps (default folds 0 1 2: the issue asks for at least 3):
#   1. the CPU plan if missing; nnU-Net's own planning and preprocessing must have run;
#   2. the classical floor with no learning (benchmarks/classical_floor.py) on the test set and per fold;
#   3. plain nnU-Net, 5 x 250 iterations per fold (nnUNetTrainerBaseline_5epochs): the stable baseline;
#   4. HiDiff binary and real-valued, 20 x 25 iterations warm-started from each fold's baseline
#      (nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500, _real_w8_joint_bce1_res_cpuWarm500; the per-fold decision
#      is made on validation), with the official test set inside the FOV predicted by the same folds' ensemble for
#      every trainer (refined and segmentor-alone columns for HiDiff).
# Cost on a 2-core CPU (2026-12-02/04): about 2-2.5 h per baseline fold and about 1.5 h per HiDiff fold.
# On a GPU: HIDIFF_DEVICE=cuda trains and predicts there, HIDIFF_PARALLEL_FOLDS=1 trains the folds of each trainer
# side by side with nnUNetv2_train before the benchmark collects them (a 2d DRIVE model at batch 4 leaves a large
# GPU idle), HIDIFF_BIN / HIDIFF_PYTHON name the console scripts' folder and the interpreter when they are not in
# .venv, HIDIFF_NP the benchmark's processes, HIDIFF_EVIDENCE_DIR the output folder
# (scripts/maintainer/device_evidence.sh sets them for this project's device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${nnUNet_raw:?set nnUNet_raw}" "${nnUNet_preprocessed:?set nnUNet_preprocessed}" "${nnUNet_results:?set nnUNet_results}"
FOLDS=("${@:-0 1 2}")
read -r -a FOLDS <<< "${FOLDS[*]}"
BIN="${HIDIFF_BIN:-${VIRTUAL_ENV:-$PWD/.venv}/bin}"
PY="${HIDIFF_PYTHON:-$BIN/python}"
DEVICE="${HIDIFF_DEVICE:-cpu}"
NP="${HIDIFF_NP:-1}"
export nnUNet_extTrainer="$PWD/trainers" nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
PLANS=nnUNetPlans_hidiffCPU
RAW="$nnUNet_raw/Dataset902_DRIVE"
OUT="${HIDIFF_EVIDENCE_DIR:-benchmark_results/Dataset902_DRIVE_issue12}"
BASE=nnUNetTrainerBaseline_5epochs
SEG="$nnUNet_results/Dataset902_DRIVE/${BASE}__${PLANS}__2d/fold_{fold}/checkpoint_final.pth"
TEST=(--test-images "$RAW/imagesTs" --test-labels "$RAW/labelsTs" --test-fov "$RAW/fovTs" --test-folds "${FOLDS[@]}"
      --disable-tta)
mkdir -p "$OUT"
step() { echo "[evidence $(date +%H:%M:%S)] $*"; }
# HIDIFF_PARALLEL_FOLDS=1: all folds of the given trainers side by side (resumed with --c), then the benchmark only
# collects them.
train_parallel() {
  [ "${HIDIFF_PARALLEL_FOLDS:-0}" = 1 ] || return 0
  local trainer fold dir pids=() resume
  mkdir -p "$OUT/logs"
  for trainer in "$@"; do for fold in "${FOLDS[@]}"; do
    dir="$nnUNet_results/Dataset902_DRIVE/${trainer}__${PLANS}__2d/fold_$fold"
    [ -f "$dir/checkpoint_final.pth" ] && continue
    resume=(); [ -f "$dir/checkpoint_latest.pth" ] && resume=(--c)
    "$BIN/nnUNetv2_train" 902 2d "$fold" -tr "$trainer" -p "$PLANS" -device "$DEVICE" "${resume[@]}" \
      > "$OUT/logs/${trainer}_fold$fold.log" 2>&1 &
    pids+=($!)
    # the first training writes nnU-Net's splits_final.json: let it, before the others read it
    while [ ! -f "$nnUNet_preprocessed/Dataset902_DRIVE/splits_final.json" ] && kill -0 "$!" 2>/dev/null; do sleep 1; done
  done; done
  for pid in "${pids[@]}"; do wait "$pid" || step "a training failed: see $OUT/logs"; done
}

if [ ! -f "$nnUNet_preprocessed/Dataset902_DRIVE/$PLANS.json" ]; then
  step "CPU plan"
  "$BIN/nnunetv2_hidiff_plan" --preset plans/presets/Dataset902_DRIVE_cpu.json
fi
step "baseline $BASE, folds ${FOLDS[*]}"
train_parallel "$BASE"
"$BIN/nnunetv2_hidiff_benchmark" -d 902 -p "$PLANS" -np "$NP" --device "$DEVICE" --folds "${FOLDS[@]}" --trainers "$BASE" \
  "${TEST[@]}" -o "$OUT/baseline_only"
step "classical floor (needs the folds' splits_final.json, written by the first training)"
FLOOR=$(mktemp -d)
"$PY" benchmarks/classical_floor.py -d 902 --split test -o "$FLOOR/ts" --json "$OUT/classical_floor_test.json" \
  | tee "$OUT/classical_floor_test.txt"
"$PY" benchmarks/classical_floor.py -d 902 --split train -o "$FLOOR/tr" --folds "${FOLDS[@]}" \
  --json "$OUT/classical_floor_train.json" | tee "$OUT/classical_floor_train.txt"
rm -rf "$FLOOR"
step "HiDiff warm-started from the baselines"
export nnUNet_HiDiff_pretrained_segmentor="$SEG"
train_parallel nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500
"$BIN/nnunetv2_hidiff_benchmark" -d 902 -p "$PLANS" -np "$NP" --device "$DEVICE" \
  --allow-unequal-budgets --folds "${FOLDS[@]}" "${TEST[@]}" \
  --trainers "$BASE" nnUNetTrainerHiDiff_w8_joint_bce1_res_cpuWarm500 nnUNetTrainerHiDiff_real_w8_joint_bce1_res_cpuWarm500 \
  -o "$OUT/warm"
step "done: $OUT"
