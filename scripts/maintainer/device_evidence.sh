#!/usr/bin/env bash
# The DRIVE evidence of issue 12 (scripts/evidence_902.sh: plain nnU-Net 5 x 250 iterations, the classical floor,
# HiDiff binary and real warm-started with 500 iterations, folds 0 1 2, the official test set in the FOV) on this
# project's GPU machine, which holds CUDA torch but none of nnU-Net's other packages and no network.
# scripts/maintainer/device_kit.sh packs what it needs into two carry folders; this script, called once with each:
#   .device_kit/part1  unpacks SimpleITK into $SITE and stops;
#   .device_kit/part2  installs the other wheels into $SITE, plans and preprocesses Dataset902_DRIVE, runs
#                      evidence_902.sh on cuda with the folds side by side and with its time limit, and packs the
#                      results (the evidence folder, to become benchmark_results/Dataset902_DRIVE_issue12, and the
#                      fold folders without checkpoints) into $OUT/evidence_902.tgz. Called again on the same (warm)
#                      machine it resumes.
# nnUNet_compile defaults to f here: torch.compile of one network per training process costs about a minute each,
# and the compile path is checked by scripts/gpu_check.py instead.
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
LIMIT_S="${HIDIFF_LIMIT_S:-560}"          # keep under the call's timeout_s (at most 600)
SITE=/tmp/hidiff_site WORK=/tmp/hidiff_work
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT" "$SITE" "$WORK"
say() { echo "[device $(date +%H:%M:%S)] $*"; }

if [ -f .device_kit/part1/simpleitk.tar.xz ]; then
  tar -xJf .device_kit/part1/simpleitk.tar.xz -C "$SITE" && touch "$SITE/.sitk" && say "SimpleITK unpacked into $SITE"
fi
[ -d .device_kit/part2 ] || exit 0
[ -f "$SITE/.sitk" ] || { say "no SimpleITK in $SITE: call with .device_kit/part1 first, then at once with part2"; exit 1; }
if [ ! -f "$SITE/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .device_kit/part2/wheels/*.whl || exit 1
  # this package's console scripts, importing from this working tree (PYTHONPATH below)
  python3 scripts/maintainer/console_scripts.py pyproject.toml "$SITE/bin" || exit 1
  touch "$SITE/.installed"
fi
export PYTHONPATH="$PWD:$SITE" PATH="$SITE/bin:$PATH"
python3 -c "import torch, SimpleITK, nnunetv2, nnunetv2_hidiff; print('torch', torch.__version__, 'on',
torch.cuda.get_device_name(0))" || exit 1
export nnUNet_raw="$PWD/.device_kit/part2/nnUNet_raw" nnUNet_preprocessed="$WORK/pre" nnUNet_results="$WORK/results"
export nnUNet_compile="${nnUNet_compile:-f}" nnUNet_def_n_proc=8
if [ ! -f "$nnUNet_preprocessed/Dataset902_DRIVE/nnUNetPlans.json" ]; then
  say "nnU-Net planning and preprocessing of Dataset902_DRIVE"
  nnUNetv2_plan_and_preprocess -d 902 -c 2d -np 8 > "$OUT/preprocess.log" 2>&1 || { tail -20 "$OUT/preprocess.log"; exit 1; }
fi
left=$((LIMIT_S - ($(date +%s) - START) - 40))
say "evidence_902.sh on cuda, folds ${HIDIFF_FOLDS:-0 1 2}, at most ${left} s"
# shellcheck disable=SC2086
HIDIFF_EVIDENCE_DIR="$WORK/Dataset902_DRIVE_issue12" HIDIFF_DEVICE=cuda HIDIFF_BIN="$SITE/bin" HIDIFF_PYTHON=python3 HIDIFF_NP="${HIDIFF_NP:-8}" HIDIFF_PARALLEL_FOLDS=1 \
  nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-3}" timeout -k 5 "$left" bash scripts/evidence_902.sh ${HIDIFF_FOLDS:-0 1 2} \
  > "$OUT/evidence.log" 2>&1
status=$?
pkill -f nnUNetv2_train 2>/dev/null
[ "$status" = 124 ] && say "time limit reached: call again on the warm machine to resume"
grep '^\[evidence' "$OUT/evidence.log"
tail -5 "$OUT/evidence.log"
tar -czf "$OUT/evidence_902.tgz" --exclude='*.pth' --exclude='*.npz' --exclude='*.pkl' \
  -C "$WORK" Dataset902_DRIVE_issue12 results
say "packed $(du -h "$OUT/evidence_902.tgz" | cut -f1) into \$OUT/evidence_902.tgz (exit status of the evidence: $status)"
exit "$status"
