#!/usr/bin/env bash
# The tabletop training recipe on one GPU, time-boxed: record episodes, build the datasets, train
# several DLP variants side by side, encode, train their dynamics, export one bundle each.
#
#   bash scripts/train_tabletop_gpu.sh OUT_DIR
#
# Variants (name:size:transparency_prior_mean): the DLP's sparsity prior at 64 px, and 128 px.
# Each training phase first runs a short probe, reads the measured step rate from metrics.jsonl
# and resumes with max_steps sized to the time left, so the cosine schedule decays in time.
# Knobs (environment): EPISODES, FRAMES (per episode), SEED, DLP_S, DYN_S (seconds of training),
# JOBS (parallel recorders), VARIANTS. Needs: python3 with torch (CUDA if present), mujoco
# (MUJOCO_GL=egl on a GPU machine), rosbags, onnx, onnxruntime.
set -euo pipefail
out=${1:?usage: train_tabletop_gpu.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
EPISODES=${EPISODES:-320}
FRAMES=${FRAMES:-100}
SEED=${SEED:-5000}
DLP_S=${DLP_S:-210}
DYN_S=${DYN_S:-120}
JOBS=${JOBS:-16}
PROBE_DLP=${PROBE_DLP:-300}
PROBE_DYN=${PROBE_DYN:-200}
LOG_EVERY=${LOG_EVERY:-50}
VARIANTS=${VARIANTS:-"p0:64:0 p2:64:-2 p4:64:-4 s128:128:-2"}
PY=${PY:-python3}
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

record() {  # size -> $out/bags<size>, $out/data<size>
    local size=$1 per=$(( (EPISODES + JOBS - 1) / JOBS )) pids=()
    for ((j = 0; j < JOBS; j++)); do
        local first=$(( j * per )) n=$per
        (( first >= EPISODES )) && break
        (( first + n > EPISODES )) && n=$(( EPISODES - first ))
        $PY -m dlp_training record-synthetic tabletop --episodes $n --frames "$FRAMES" \
            --size "$size" --seed $(( SEED + first )) --out "$out/bags$size/part$(printf %02d $j)" \
            >"$out/record$size.$j.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    $PY -m dlp_training build-dataset --bags "$out/bags$size" --topic /camera/image_raw \
        --action-topic /tabletop/command --fps 10 --size "$size" --out "$out/data$size" \
        --no-progress 2>&1 | tail -1
    rm -rf "$out/bags$size"
}

minutes() { awk "BEGIN { print $1 * 1.1 / 60 }"; }  # the time limit: a safety net

steps_for() {  # run_dir seconds batch -> max_steps reaching the time budget at the probe's rate
    $PY - "$1" "$2" "$3" <<'EOF'
import json, sys
run, seconds, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in open(f'{run}/metrics.jsonl')]
train = [r for r in rows if r.get('split') == 'train']
last = train[-1]
rate = last.get('images_per_s') or last.get('clips_per_s')
rate *= (last.get('horizon', 1) + 3) / (10 + 3) if 'horizon' in last else 1  # full rollouts
print(int(last['step'] + 0.9 * seconds * rate / batch))
EOF
}

dlp() {  # name size prior (every step checked: `set -e` does not act inside `if`)
    local name=$1 size=$2 prior=$3 run="$out/dlp_$1" steps
    local config=dlp_training/configs/dlp_tabletop$size.yaml
    local both=(--set train.eval_every=1000 --set train.log_every="$LOG_EVERY" --no-progress)
    $PY -m dlp_training train-dlp --config "$config" --data "$out/data$size" --out "$run" \
        --set model.transparency_prior_mean="$prior" --set train.batch_size=128 \
        --set train.checkpoint_every=1000 --set train.max_steps="$PROBE_DLP" "${both[@]}" ||
        return 1
    steps=$(steps_for "$run" "$DLP_S" 128) || return 1
    log "dlp $name: probe done, resuming to max_steps=$steps"
    $PY -m dlp_training train-dlp --out "$run" --resume --set train.max_steps="$steps" \
        --set train.time_limit_min="$(minutes "$DLP_S")" "${both[@]}" || return 1
    $PY -m dlp_training encode-dataset --dlp "$run" --data "$out/data$size" \
        --out "$out/latents_$name" --device "$DEVICE" --threads 2 --no-progress
}

dynamics() {  # name
    local name=$1 run="$out/dyn_$1" steps
    local both=(--set train.eval_every=500 --set train.checkpoint_every=1000
                --set train.log_every="$LOG_EVERY" --no-progress)
    $PY -m dlp_training train-dynamics --config dlp_training/configs/dynamics_tabletop64.yaml \
        --latents "$out/latents_$name" --out "$run" --set model.hidden_dim=128 --set train.batch_size=64 \
        --set train.max_steps="$PROBE_DYN" "${both[@]}" || return 1
    steps=$(steps_for "$run" "$DYN_S" 64) || return 1
    log "dynamics $name: probe done, resuming to max_steps=$steps"
    $PY -m dlp_training train-dynamics --out "$run" --resume --set train.max_steps="$steps" \
        --set train.time_limit_min="$(minutes "$DYN_S")" "${both[@]}" || return 1
    $PY -m dlp_training export --dlp "$out/dlp_$name" --dynamics "$run" --out "$out/bundle_$name"
}

variant() {  # name:size:prior
    IFS=: read -r name size prior <<<"$1"
    if { dlp "$name" "$size" "$prior" && dynamics "$name"; } >"$out/$name.log" 2>&1; then
        log "variant $name: done"
    else
        log "variant $name: FAILED, see $name.log"; tail -5 "$out/$name.log"; return 1
    fi
}

DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
log "device $DEVICE; variants: $VARIANTS"
sizes=$(for v in $VARIANTS; do echo "$v" | cut -d: -f2; done | sort -u)
for size in $sizes; do record "$size" & done
wait
log "datasets: $(du -sh "$out"/data* | tr '\n' ' ')"
pids=()
for v in $VARIANTS; do variant "$v" & pids+=($!); done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
log "all variants finished (failure: $fail)"
exit $fail
