"""What the four benchmarks share: arguments, the run header, timing, the copy-rate ceiling, the case loop.

Timing is the libraries': on CUDA triton.testing.do_bench, which zeroes a buffer larger than L2 before every call
(50 MB on an H100, 60 on an H200; the tutorial's gate step moves 44-88 MB: a warm L2 would flatter it); elsewhere,
and for host time on any device, torch.utils.benchmark's adaptive_autorange. Both give the median and
interquartile range.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata

import torch
from torch.utils import benchmark

import convlstm
import make_table

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fused_backends(device, timed=True):
    """Fused `lstm_gates` backends to measure on `device`. On the CPU Triton is its interpreter (Python speed) and
    "cpu_twin" a debugging twin of the CUDA math, whose host cost and memory mean something but not its speed."""
    if device.type == "cpu" and timed:
        return []
    return [name for name in convlstm.available_backends(device)
            if name != "torch" and (name != "triton" or device.type == "cuda")]


def comma_list(allowed):
    """argparse type: a comma-separated subset of `allowed`."""
    def split(text):
        bad = [item for item in text.split(",") if item not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown value {', '.join(bad)!r}: choose from {', '.join(allowed)}")
        return text.split(",")
    return split


def parser(doc):
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny shapes, few repeats)")
    p.add_argument("--out", metavar="FILE.json", help="write the header and one record per case here")
    p.add_argument("--threads", type=int, metavar="N", help="torch's CPU threads (default: torch's choice)")
    return p


def parse(p, argv, available=None, default=None):
    """(args, device). --backends outside `available(device)` is an argument error (exit 2), never a silent skip;
    without the flag, `default(device)` or all available."""
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: no CUDA GPU is visible to torch {torch.__version__}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if available:
        can = available(device)
        missing = [name for name in args.backends or () if name not in can]
        if missing:
            p.error(f"--backends: {', '.join(missing)} cannot run on {device.type} here ({', '.join(can)} can)")
        args.backends = args.backends or (default or available)(device)
    return args, device


def header(kind, device, args, **extra):
    """Enough to tell two results files apart and to rerun one."""
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    cpus = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    git = ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always", "--dirty", "--abbrev=40",
           "--exclude", "*"]  # the full hash, "-dirty" when tracked files differ from it; none in a copy without .git
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() if shutil.which("git") else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (cpus or [platform.machine()])[0]
    triton = next((d.version for d in metadata.distributions() if d.metadata["Name"] == "triton"), None)
    return dict(kind=kind, device=device.type, device_name=name, cpu_threads=torch.get_num_threads(),
                torch=torch.__version__, triton=triton, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                python=platform.python_version(), git_commit=commit or None, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                quick=args.quick, command=" ".join([os.path.basename(sys.executable)] + sys.argv), **extra)


def time_ms(fn, device, seconds, host=False):
    """(median, interquartile range) of fn()'s time in ms over at least `seconds` of calls, after a warm-up.
    host=True: blocks of calls back to back, one synchronize per block (the rate a host-bound loop runs at)."""
    if device.type == "cuda" and not host:
        from triton.testing import do_bench
        q1, median, q3 = do_bench(fn, rep=seconds * 1e3, quantiles=[0.25, 0.5, 0.75])
        return median, q3 - q1
    # Blocks of calls until their IQR is within 10% of the median (at least 4 blocks, at most 3x `seconds`), on
    # torch's thread count (the Timer's default is one); the timer synchronizes CUDA at each block's ends.
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.adaptive_autorange(min_run_time=seconds, max_run_time=3 * seconds)
    return measurement.median * 1e3, measurement.iqr * 1e3


def copy_gbps(device, nbytes):
    """Device-to-device copy rate in GB/s (1e9 bytes read plus written), the ceiling a memory-bound op's GB/s is
    judged against, measured in the same run."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_ms(lambda: dst.copy_(src), device, 0.3)[0] / 1e6


def run_cases(cases, args, head):
    """Run (keys, measure) cases in order, measure() giving one field dict per key; print each record, then its
    README table; return 1 if a case failed, else 0. A failure is recorded and the run goes on; --out is rewritten
    after each case, so a run killed by a time box (gpu_session.sh) keeps what it measured."""
    results = []
    for keys, measure in cases:
        try:
            got = measure()
        except Exception as error:  # keep the other cases' numbers; the exit status says one failed
            got = [dict(status="error", error=f"{type(error).__name__}: {error}")] * len(keys)
        for key, fields in zip(keys, got):
            results.append({**key, "status": "ok", **fields})
            print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in results[-1].items()
                            if k != "config"), file=sys.stderr if "error" in fields else sys.stdout, flush=True)
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump({"header": head, "results": results}, f, indent=1, allow_nan=False)
            os.replace(args.out + ".tmp", args.out)
    print(make_table.TABLES[head["kind"]][1](dict(header=head, results=results)))
    return int(any(record["status"] == "error" for record in results))
