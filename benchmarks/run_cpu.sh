#!/usr/bin/env bash
# Regenerate the CPU results and the README tables in one command, from the repository root or anywhere:
#
#     bash benchmarks/run_cpu.sh                 # torch's default thread count (all cores)
#     bash benchmarks/run_cpu.sh --threads 1     # extra arguments go to every benchmark
#
# Writes benchmarks/results/{dispatch,gates,train,memory,data,inference}_cpu.json, then rewrites the generated part
# of benchmarks/README.md from every file in benchmarks/results/. Takes about 17 minutes on 2 cores, most of it
# torch.compile's first compiles, bench_data's tutorial-size training step (2-3 minutes) and bench_inference (3-4). Run it on a quiet
# machine: timings taken beside other work are noise.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
status=0
"$PYTHON" benchmarks/bench_dispatch.py --device cpu --out benchmarks/results/dispatch_cpu.json "$@" || status=$?
"$PYTHON" benchmarks/bench_gates.py --device cpu --out benchmarks/results/gates_cpu.json "$@" || status=$?
"$PYTHON" benchmarks/bench_train.py --device cpu --out benchmarks/results/train_cpu.json "$@" || status=$?
"$PYTHON" benchmarks/bench_memory.py --device cpu --out benchmarks/results/memory_cpu.json "$@" || status=$?
"$PYTHON" benchmarks/bench_data.py --device cpu --out benchmarks/results/data_cpu.json "$@" || status=$?
"$PYTHON" benchmarks/bench_inference.py --device cpu --out benchmarks/results/inference_cpu.json "$@" || status=$?
"$PYTHON" benchmarks/make_table.py --write
exit "$status"
