#!/usr/bin/env bash
# The README's main command: sets up .venv, prepares the offline demo corpus
# (Project Gutenberg plays), trains a tiny block-recurrent model (Rec:fixed:skip)
# on the CPU for a few minutes, evaluates it on the held-out plays and prints a
# sample. Rerunning it resumes the run in workdirs/demo instead of starting
# over; `rm -r workdirs/demo` starts afresh.
# Extra arguments go to every brt.main call, e.g.
#   bash scripts/demo.sh --gin_param='TrainConfig.num_steps = 3000'
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
bash scripts/prepare_data.sh data
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
workdir="${BRT_DEMO_WORKDIR:-workdirs/demo}"
mkdir -p "$(dirname "$workdir")"
run() { .venv/bin/python -m brt.main --workdir="$workdir" "$@"; }

echo
echo "== training (Rec:fixed:skip, tiny size, Gutenberg plays as bytes) =="
run --mode=train --gin_file=demo.gin "$@"

echo
echo "== evaluating on the held-out test plays (whole documents) =="
run --mode=eval --eval_split=test "$@"

echo
echo "== sampling from the model =="
run --mode=generate --prompt=$'ACT I. SCENE I.\n' --num_tokens=400 \
    --temperature=0.8 --top_p=0.95 "$@"

echo
echo "Checkpoints: $workdir/checkpoints  (rerun to resume; rm -r $workdir to restart)"
echo "Metrics:     $workdir/metrics.jsonl, and TensorBoard: .venv/bin/tensorboard --logdir $workdir/tensorboard"
echo "Evaluation:  $workdir/eval_test_*.json and the loss-by-position plot $workdir/eval_test_*.png"
