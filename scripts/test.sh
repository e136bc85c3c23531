#!/usr/bin/env bash
# The whole test suite, from a fresh machine: setup (idempotent), lint, then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k dataset -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
bash "$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
cd "$ROOT"
echo "[test] ruff format --check + ruff check"
ruff format --check --quiet . || { echo "ruff format found unformatted files (run: ruff format .)"; exit 1; }
ruff check --quiet .
echo "[test] pytest"
# The setup above built the messages: a ROS test that cannot import them is a failure, not a skip.
export DLP_REQUIRE_ROS=1
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "[test] pytest collected no tests: that is a failure of the suite" >&2
  exit 1
fi
echo "[test] pytest exit code $rc; whole run $(( $(date +%s) - start )) s"
exit "$rc"
