# Source this after scripts/setup.sh: activates the venv and the colcon install, and keeps DDS
# discovery on loopback. Usage: source scripts/env.sh
_dlp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_dlp_venv="${DLP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dlp_ros/venv}"
_dlp_nounset=0; case $- in *u*) _dlp_nounset=1; set +u;; esac
# shellcheck disable=SC1091
source "$_dlp_venv/bin/activate"
# shellcheck disable=SC1091
source "$_dlp_root/install/setup.bash"
[ "$_dlp_nounset" = 1 ] && set -u
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$_dlp_venv"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export MUJOCO_GL="${MUJOCO_GL:-egl}"
unset _dlp_root _dlp_venv _dlp_nounset
