#!/usr/bin/env bash
# Packs what the DRIVE evidence (scripts/evidence_902.sh) needs on this project's GPU machine (the `device` tool of
# the developers' workplace: Python 3.12 with CUDA torch, nothing else of ours, no network, at most 64 MiB per call
# including the working tree) into two carry folders, .device_kit/part1 and .device_kit/part2, ignored by git:
#
#   part1  SimpleITK (its wheel alone is 53 MB; repacked as tar.xz)                  carry: [".device_kit/part1"]
#   part2  the other wheels nnunetv2 needs beyond the machine's image, and the raw
#          Dataset902_DRIVE (imagesTr/Ts, labelsTr/Ts, fovTr/Ts)                      carry: [".device_kit/part2"]
#
# Then, in a session that has a device machine, two calls back to back (the machine stays warm about 30 s):
#   run(command="bash scripts/maintainer/device_evidence.sh", carry=[".device_kit/part1"], timeout_s=120)
#   run(command="bash scripts/maintainer/device_evidence.sh", carry=[".device_kit/part2"], timeout_s=600)
# and, if the second stopped at its time limit, the same second call again (everything resumes).
#
#   nnUNet_raw=... ./scripts/maintainer/device_kit.sh        (needs pip's network access and xz; about 1 min)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${nnUNet_raw:?set nnUNet_raw (the raw Dataset902_DRIVE is packed)}"
KIT=.device_kit
PIP="${VIRTUAL_ENV:-$PWD/.venv}/bin/python -m pip"
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx "/$KIT/" "$EXCLUDE" 2>/dev/null || echo "/$KIT/" >> "$EXCLUDE"
rm -rf "$KIT" && mkdir -p "$KIT/part1" "$KIT/part2/wheels" "$KIT/tmp"
# The versions this project is tested with (pyproject pins nnunetv2 >=2.8.1,<2.9); the machine's image already holds
# torch, numpy, scipy, scikit-image, scikit-learn, pandas, matplotlib, seaborn, tifffile, timm, einops, msgpack,
# httpx, rich, threadpoolctl, tqdm, requests.
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64)
$PIP download -q --no-deps "${TARGET[@]}" -d "$KIT/tmp" SimpleITK==2.5.7
$PIP download -q --no-deps "${TARGET[@]}" -d "$KIT/part2/wheels" nnunetv2==2.8.1 batchgenerators==0.25.5 \
  batchgeneratorsv2==0.3.6 dynamic-network-architectures==0.4.4 blosc2==4.15.0 ndindex==1.10.1 \
  connected-components-3d==4.1.1 nibabel==5.4.2 graphviz==0.21 yacs==0.1.8
$PIP wheel -q --no-deps -w "$KIT/part2/wheels" acvl-utils==0.2.6   # published as a source archive only
(cd "$KIT/tmp" && mkdir sitk && cd sitk && unzip -q ../simpleitk-*.whl && tar -cf - . | xz -T0 -1 > ../../part1/simpleitk.tar.xz)
rm -rf "$KIT/tmp"
mkdir -p "$KIT/part2/nnUNet_raw"
cp -r "$nnUNet_raw/Dataset902_DRIVE" "$KIT/part2/nnUNet_raw/"
tree_kb=$(git ls-files -z | xargs -0 du -ck | tail -1 | cut -f1)
for part in part1 part2; do
  kb=$(du -sk "$KIT/$part" | cut -f1)
  echo "$KIT/$part: $((kb / 1024)) MiB + working tree $((tree_kb / 1024)) MiB (limit 64 MiB per call)"
  [ $((kb + tree_kb)) -lt $((64 * 1024)) ] || { echo "device_kit: $KIT/$part is too large for one call" >&2; exit 1; }
done
