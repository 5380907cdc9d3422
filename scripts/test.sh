#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
# Tests run on the CPU (sharding tests start their own processes with 8 fake
# devices). Compiled programs are cached on disk: many tests, and the
# processes they start, compile the same tiny models.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$root/.cache/jax}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# One pytest worker per core (pytest-xdist): most of the suite's time is
# compiling small programs, which one process does on one core. Pass -n 0
# (or any -n) to choose otherwise.
workers=(-n auto)
for arg in "$@"; do
  case "$arg" in
    -n|-n*|--numprocesses*|-p|--pdb|--trace) workers=() ;;
  esac
done
set +e
.venv/bin/python -m pytest "${workers[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests; that is a failure here." >&2
  exit 1
fi
exit "$rc"
