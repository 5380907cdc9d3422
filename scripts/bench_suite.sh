#!/usr/bin/env bash
# The performance suite in one command, on whatever device jax finds: the
# CPU here, the GPU (or TPU) on an accelerator host. Each benchmark prints
# its table and writes its JSON under OUT; one that fails or runs past its
# time limit is reported and the suite goes on with the next.
#
#   bash scripts/bench_suite.sh                      # all, into bench_results/suite
#   OUT=bench_results/h100 bash scripts/bench_suite.sh model paper scaling
#   PYTHON=python3 PORT_PYTHON=python3 bash scripts/bench_suite.sh   # a host
#       whose python already has jax for its accelerator, torch and the port
#
# Benchmarks (in this order by default): model, model_bf16 (bench config,
# every variant; compile time against segment length in float32), paper
# (the paper's 12 x 1024 model in bf16, XL and Rec:fixed:skip; accelerators
# only, unless named), port, port_bf16 (side by side with the PyTorch
# port), scaling, inference.
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
# brt from this checkout, whichever python runs it (installed or not).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench_results/suite}
LIMIT_S=${BENCH_TIMEOUT:-3600}  # per benchmark
PORT_ARGS=()
if [[ -n "${PORT_PYTHON:-}" ]]; then PORT_ARGS=(--port_python "$PORT_PYTHON"); fi
mkdir -p "$OUT"

backend=$("$PYTHON" -c 'import jax; print(jax.default_backend())') || {
  echo "error: $PYTHON cannot import jax; run scripts/setup_env.sh or set PYTHON" >&2
  exit 1
}
if [[ $# -gt 0 ]]; then
  names=("$@")
else
  names=(model model_bf16 port port_bf16 scaling inference)
  # The paper's model is an accelerator's size: minutes per step on a CPU.
  if [[ $backend != cpu ]]; then names=(model model_bf16 paper "${names[@]:2}"); fi
fi
echo "backend $backend; benchmarks: ${names[*]}; results in $OUT"

# The command of each benchmark, into the array cmd; fails on an unknown name.
command_for() {
  case $1 in
    model) cmd=(scripts/bench_model.py --out "$OUT/model.json") ;;
    model_bf16) cmd=(scripts/bench_model.py --dtype bfloat16 --no-compile_check
                     --out "$OUT/model_bf16.json") ;;
    paper) cmd=(scripts/bench_model.py --size paper --dtype bfloat16
                --variants xl rec_fixed_skip --no-compile_check
                --out "$OUT/model_paper.json") ;;
    port) cmd=(scripts/bench_pytorch_port.py "${PORT_ARGS[@]}" --out "$OUT/pytorch_port.json") ;;
    port_bf16) cmd=(scripts/bench_pytorch_port.py "${PORT_ARGS[@]}" --dtype bfloat16
                    --out "$OUT/pytorch_port_bf16.json") ;;
    scaling) cmd=(scripts/bench_scaling.py --out "$OUT/scaling.json") ;;
    inference) cmd=(scripts/bench_inference.py --out "$OUT/inference.json") ;;
    *) echo "error: unknown benchmark '$1'; choose from model, model_bf16," \
            "paper, port, port_bf16, scaling, inference" >&2; return 2 ;;
  esac
}
for name in "${names[@]}"; do command_for "$name" || exit 2; done

failed=()
for name in "${names[@]}"; do
  command_for "$name"
  echo "=== $name: ${cmd[*]}"
  start=$SECONDS
  PYTHONUNBUFFERED=1 timeout "$LIMIT_S" "$PYTHON" "${cmd[@]}"
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  if [[ $rc -ne 0 ]]; then failed+=("$name"); fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
