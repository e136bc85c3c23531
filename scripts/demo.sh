#!/usr/bin/env bash
# The main job on a fresh machine:
#   1. setup (idempotent; DLP_SKIP_SETUP=1 skips it in an already set-up checkout);
#   2. record synthetic tabletop episodes as rosbag2 (MuJoCo on the CPU), unless already there,
#      and build + preview the training dataset from them;
#   3. start the perception node (its own process) on the model bundle, play one recorded episode
#      into it over real ROS 2 topics (Fast DDS on loopback, a ROS_DOMAIN_ID of its own) at its
#      recorded rate, record /dlp/particles and /dlp/prediction into a rosbag2, write an overlay
#      video and a prediction strip, and print a summary (frames in/out, dropped frames,
#      end-to-end latency p50/p99, prediction PSNR per step against the true next frames).
# Outputs go to ${DLP_OUT:-outputs/demo}. The bundle is ${DLP_BUNDLE:-the installed
# share/dlp_ros/bundles/tabletop64}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${DLP_OUT:-$ROOT/outputs/demo}"
if [ "${DLP_SKIP_SETUP:-0}" != 1 ]; then
  bash "$ROOT/scripts/setup.sh"
fi
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
cd "$ROOT"
BUNDLE="${DLP_BUNDLE:-$ROOT/install/dlp_ros/share/dlp_ros/bundles/tabletop64}"
if [ ! -f "$BUNDLE/model_card.yaml" ]; then
  echo "demo: no model bundle at $BUNDLE" >&2
  echo "  set DLP_BUNDLE=DIR (python -m dlp_training export --dlp RUN --dynamics RUN --out DIR)" >&2
  exit 1
fi
# A domain of its own (unless the caller chose one); DDS discovery stays on loopback (env.sh).
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( 101 + $$ % 100 ))}"

if [ ! -f "$OUT/bags/record.yaml" ]; then
  python -m dlp_training record-synthetic tabletop --episodes 4 --frames 50 --size 64 \
    --storage mcap --seed 0 --out "$OUT/bags" --overwrite
fi
if [ ! -f "$OUT/dataset/manifest.yaml" ]; then
  python -m dlp_training build-dataset --bags "$OUT"/bags/episode_*/ --topic /camera/image_raw \
    --action-topic /tabletop/command --size 64 --fps 10 --out "$OUT/dataset" --overwrite
  python -m dlp_training preview-dataset --data "$OUT/dataset" --out "$OUT/dataset_preview.png"
fi

# The node on episode 0 over ROS 2 (dlp_ros/demo.py starts and stops the node itself).
python -m dlp_ros.demo --bag "$OUT/bags/episode_0000" --bundle "$BUNDLE" \
  --topic /camera/image_raw --action-topic /tabletop/command --horizon 10 \
  --out "$OUT/ros"

echo
echo "outputs:"
echo "  bags (rosbag2 mcap + ground truth csv):  $OUT/bags"
echo "  dataset (frames .npy + manifest.yaml):   $OUT/dataset"
echo "  dataset preview:                         $OUT/dataset_preview.png"
echo "  node outputs (rosbag2 /dlp/particles, /dlp/prediction): $OUT/ros/bag"
echo "  overlay video:                           $OUT/ros/overlay.mp4 (or .gif)"
echo "  prediction strip:                        $OUT/ros/prediction_strip.png"
echo "  summary:                                 $OUT/ros/summary.json"
echo "  node log:                                $OUT/ros/node.log"
