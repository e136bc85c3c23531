#!/usr/bin/env bash
# The main job on a fresh machine: setup, record synthetic tabletop episodes as rosbag2 (MuJoCo,
# rendered on the CPU), and build the training dataset from those bags.
# Outputs go to ${DLP_OUT:-outputs/demo}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${DLP_OUT:-$ROOT/outputs/demo}"
bash "$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
cd "$ROOT"
python -m training record-synthetic tabletop --episodes 4 --frames 50 --size 64 \
  --storage mcap --seed 0 --out "$OUT/bags" --overwrite
python -m training build-dataset --bags "$OUT"/bags/episode_*/ --topic /camera/image_raw \
  --action-topic /tabletop/command --size 64 --fps 10 --out "$OUT/dataset" --overwrite
python -m training preview-dataset --data "$OUT/dataset" --out "$OUT/dataset_preview.png"
echo
echo "outputs:"
echo "  bags (rosbag2 mcap + ground truth csv): $OUT/bags"
echo "  dataset (frames .npy + manifest.yaml):  $OUT/dataset"
echo "  preview image:                          $OUT/dataset_preview.png"
