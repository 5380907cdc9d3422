#!/usr/bin/env bash
# What each difference between the paper's model (meliad's, brt's default)
# and brt's classic model is worth: XL:W and Rec:fixed:skip trained on the
# plays as bytes with one of the paper's choices turned back to the classic
# one (configs/options/brt_classic.gin has them all), paired by seed with
# the paper's model itself (the same data order; workdirs/paper<STEPS>
# holds the baseline). Every ablation is one scripts/reproduce_table.py
# call in workdirs/ablate<STEPS>/<name>, so it resumes where it stopped;
# then scripts/compare_runs.py prints each one's paired difference
# (positive: the classic choice is worse) and writes
# <out>/<name>-<variant>.json.
#
#   bash scripts/ablate_paper_model.sh            # 300 steps, seeds 0 1
#   STEPS=2000 SEEDS="0 1 2 3" bash scripts/ablate_paper_model.sh
#   ABLATIONS="no_qk_norm gate_from_2" bash scripts/ablate_paper_model.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
steps="${STEPS:-300}"
read -r -a seeds <<< "${SEEDS:-0 1}"
only=" ${ABLATIONS:-} "  # names to run (default: every one below)
base="workdirs/paper${steps}"
out="workdirs/ablate${steps}"
py=.venv/bin/python

# name|variants|bindings (';'-separated), one difference per line.
ablations="
window_blocks|xl rec_fixed_skip|ModelConfig.window = 'blocks'
no_qk_norm|xl rec_fixed_skip|ModelConfig.qk_norm = False
layernorm_gelu_bias|xl rec_fixed_skip|ModelConfig.norm = 'layer';ModelConfig.mlp_activation = 'gelu';ModelConfig.use_bias = True
untied_embeddings|xl rec_fixed_skip|ModelConfig.tie_embeddings = False
gate_from_2|rec_fixed_skip|ModelConfig.fixed_gate_bias_init = 2.0;ModelConfig.fixed_gate_bias_std = 0.0
state_reads_block_only|rec_fixed_skip|ModelConfig.state_reads_previous_block = False
masked_empty_cache|xl rec_fixed_skip|ModelConfig.empty_cache = 'masked'
all_classic|xl rec_fixed_skip|include 'options/brt_classic.gin'
"

reproduce() {
  "$py" scripts/reproduce_table.py --steps "$steps" --seeds "${seeds[@]}" \
      --corpora plays_bytes "$@" > /dev/null
}

echo "== the paper's model (baseline, $base) =="
reproduce --variants xl rec_fixed_skip --withhold_state --out "$base"
while IFS='|' read -r name variants bindings; do
  [[ -z "$name" ]] && continue
  [[ "$only" != "  " && "$only" != *" $name "* ]] && continue
  echo "== $name: $bindings =="
  gin_args=()
  IFS=';' read -r -a lines <<< "$bindings"
  for line in "${lines[@]}"; do
    gin_args+=(--gin_param="$line")
  done
  read -r -a vs <<< "$variants"
  reproduce --variants "${vs[@]}" --out "$out/$name" "${gin_args[@]}"
  for v in "${vs[@]}"; do
    "$py" scripts/compare_runs.py --steps "$steps" --corpora plays_bytes \
        --metric bits_per_byte --baseline "$base" "$v" \
        --candidate "$out/$name" "$v" --json "$out/$name-$v.json"
  done
done <<< "$ablations"
