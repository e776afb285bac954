"""What the two benchmarks share: argument checks, the run header, timing, peak memory, ceilings, JSON and tables.

Timing: on the GPU, CUDA events around each call, with a 256 MB buffer zeroed between calls so every call starts
from a cold L2 (the H200's is 60 MB, the tutorial's gate step moves 44-88 MB); on the CPU, a wall clock around each
call. Both warm up first and report the median and the spread (interquartile range over the median).
A comparison of two configurations (time_paired_ms) times them in one window, alternating calls, so drift between
windows (10-30% on a shared CPU) does not land on one side only.

Peak memory (`peak_mem_mb`): the most memory allocated at once during one call, above what was allocated when the
call began (inputs, weights and optimizer state that exist before the call are not counted; everything the call
allocates, outputs and saved activations included, is). On the GPU from the caching allocator's statistics, on the
CPU from the allocation events of torch.profiler (profile_memory=True), so both devices count the same thing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

import torch

import convlstm
from convlstm.memory import peak_mem_mb, saved_bytes  # noqa: F401 (bench_memory and bench_train use them)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fused_backends(device):
    """The fused `lstm_gates` backends worth timing on `device`, in the package's order of preference.

    On a GPU: whatever `convlstm.available_backends` lists besides "torch", so new backends join by themselves.
    On the CPU, Triton is its interpreter and "cpu_twin" a debugging twin of the CUDA math: correctness tools, not
    speeds (and asking whether the twin runs would build it); any other backend that runs on the CPU is included.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return [name for name in convlstm.available_backends(device) if name != "torch"]
    candidates = [name for name in convlstm.ops.lstm_gates.backends.BACKENDS if name not in ("auto", "torch", "triton", "cpu_twin")]
    return [name for name in candidates if convlstm.ops.lstm_gates.backends.unavailable_reason(name, device) is None]


def compiled_backends(device):
    """Every fused backend that runs on `device` except Triton's interpreter (on the CPU it runs kernels in Python,
    minutes per training step): what bench_dispatch and bench_memory measure, the cpu_twin included."""
    device = torch.device(device)
    return [name for name in convlstm.available_backends(device)
            if name != "torch" and not (name == "triton" and device.type == "cpu")]


def comma_list(allowed):
    """argparse type: a comma-separated subset of `allowed`, with an error naming the bad entry."""
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list {text!r}: choose from {', '.join(allowed)}")
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown value {item!r} in {text!r}: choose from {', '.join(allowed)}")
        return items
    return parse


def add_common_args(parser):
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny shapes, few repeats)")
    parser.add_argument("--out", metavar="FILE.json", help="write the header and results as JSON here")
    parser.add_argument("--budget-s", type=float, default=None, metavar="S",
                        help="stop starting new cases after S seconds; the rest are recorded as skipped (exit 3)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice, recorded in the header)")


def check_backends(parser, requested, available, device):
    """The --backends asked for (default: all `available`); one that cannot run on `device` is an argument error."""
    missing = [name for name in requested or () if name not in available]
    if missing:
        parser.error(f"--backends: {', '.join(missing)} cannot run on {device.type} here "
                     f"(available: {', '.join(available)})")
    return requested or available


def check_common_args(parser, args):
    """Turn bad arguments into a clear error (argparse exits with status 2)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: no CUDA GPU is visible to torch {torch.__version__} "
                     f"(torch.version.cuda={torch.version.cuda}); use --device cpu")
    if args.out is not None:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            parser.error(f"--out {args.out}: folder {out_dir} does not exist")
    if args.budget_s is not None and not args.budget_s > 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit():
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(kind, device, args):
    """Who, what and where: enough to tell two results files apart and to rerun one."""
    device = torch.device(device)
    return {
        "kind": kind,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "quick": bool(args.quick),
    }


def write_json(path, head, results):
    """Write atomically, so a run killed mid-way leaves the last complete file."""
    if path is None:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"header": head, "results": results}, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ColdL2:
    """A buffer to overwrite between timed GPU calls so none of them reads the previous call's data from L2."""
    buffers = {}

    @classmethod
    def flush(cls, device):
        if device not in cls.buffers:
            cls.buffers[device] = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
        cls.buffers[device].zero_()


def _time_cycles(fns, device, seconds, min_reps, max_reps, warmup):
    """Each call's time in ms, for as many rounds of fns (called in order: A, B, A, B, ...) as fit in `seconds`.
    GPU: CUDA events around each call, with L2 overwritten before it; CPU: a wall clock per call."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    start = time.perf_counter()
    for fn in fns:
        fn()
    sync(device)
    estimate = max(time.perf_counter() - start, 1e-6)  # one round
    reps = int(min(max(seconds / estimate, min_reps), max_reps))
    order = list(fns) * reps
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in order]
        for fn, (begin, end) in zip(order, events):
            _ColdL2.flush(device)
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [begin.elapsed_time(end) for begin, end in events]
    times = []
    for fn in order:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_ms(fn, device, seconds=0.2, min_reps=5, max_reps=200, warmup=3):
    """Median and relative spread (IQR / median) of fn()'s time in ms, over as many calls as fit in `seconds`."""
    return median_and_spread(_time_cycles([fn], torch.device(device), seconds, min_reps, max_reps, warmup))


def time_paired_ms(fn_a, fn_b, device, seconds=0.4, min_reps=5, max_reps=200, warmup=2):
    """Medians and spreads of fn_a()'s and fn_b()'s times in ms, timed in one window, alternating A, B, A, B, ...

    Returns (ms_a, spread_a, ms_b, spread_b). Both see the same clock speed, cache pressure and neighbours, so
    their ratio is fair even where timings taken one after another drift (by 10-30% on a shared CPU). `seconds`
    is the window for both together; each call is timed as in time_ms.
    """
    times = _time_cycles([fn_a, fn_b], torch.device(device), seconds, min_reps, max_reps, warmup)
    return median_and_spread(times[0::2]) + median_and_spread(times[1::2])


def median_and_spread(times):
    median = statistics.median(times)
    if len(times) >= 4:
        q1, _, q3 = statistics.quantiles(times, n=4)
        return median, (q3 - q1) / median
    return median, (max(times) - min(times)) / median


def copy_gbps(device, nbytes=None):
    """Device-to-device copy bandwidth in GB/s (1e9 bytes), counting bytes read plus bytes written."""
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), device, seconds=0.3, min_reps=5, max_reps=50)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(device, dtype, size=None):
    """Dense matmul rate in TFLOP/s on random data; float32 runs with TF32 allowed, as cuDNN's convolutions do."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ms, _ = time_ms(lambda: a @ b, device, seconds=0.3, min_reps=3, max_reps=20)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return 2 * size**3 / (ms * 1e-3) / 1e12


class Budget:
    """Stop starting new cases once `seconds` have passed (None: no limit)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.start = time.monotonic()

    def spent(self):
        return self.seconds is not None and time.monotonic() - self.start > self.seconds


def format_table(rows, columns):
    """rows: dicts; columns: (title, key, format). A plain fixed-width text table."""
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        cells.append([_fmt(row.get(key), fmt) for _, key, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _fmt(value, fmt):
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return format(value, fmt) if fmt else str(value)


def finish(title, head, results, columns, out):
    """The end of every benchmark: print `title` and the whole table, write the results file, return the exit
    code."""
    print(title)
    print(format_table(results, columns))
    write_json(out, head, results)
    return exit_code(results)


def exit_code(results):
    """0: every case ran; 1: a case failed; 3: none failed but some were skipped by the time budget."""
    if any(r.get("status") == "error" for r in results):
        return 1
    if any(r.get("status") == "skipped" for r in results):
        return 3
    return 0
