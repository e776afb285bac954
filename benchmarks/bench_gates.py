"""bench_gates: one ConvLSTM gate step (`lstm_gates`) forward, backward and both, on every backend that runs here.

    python benchmarks/bench_gates.py --device cuda --out benchmarks/results/gates_cuda.json
    python benchmarks/bench_gates.py --device cpu --quick

Backends "torch" (lstm_gates_ref), "compile" (torch.compile of it) and the fused ones (on a GPU "cuda", "triton") x
fp32, bf16, fp16 x NCHW, channels_last x SHAPES. Reports the median time and IQR, GB/s from the fewest bytes a pass
moves (gate_bytes) and its share of the copy rate measured in the same run, and peak memory.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys

import torch

import benchutil
import convlstm
from convlstm.memory import peak_mem_mb

# Elements each pass must move per hidden-state element: fwd reads gates (4) and c_prev (1), writes h_next and
# c_next (2); bwd reads grad_h_next, grad_c_next, gates, c_prev (7, the rest recomputed), writes grad_gates and
# grad_c_prev (5); fwd+bwd both, as two kernels must.
ELEMENTS_PER_N = {"fwd": 7, "bwd": 12, "fwd+bwd": 19}
LAYOUTS = ("nchw", "channels_last")
# Largest first (the GPU targets are judged there); the CPU's are the tutorial's batch and channels at half its size.
SHAPES = {"cuda": [(256, 64, 64, 64), (12, 64, 64, 64), (64, 64, 64, 64)],
          "cpu": [(4, 32, 32, 32), (12, 64, 32, 32)], "quick": [(2, 8, 16, 16)]}
# |output - float32 reference| allowed: outputs are O(1), so a few units in the last place of each storage dtype.
MAX_ABS_ERR = {"fp32": 1e-4, "bf16": 6e-2, "fp16": 8e-3}


def shape_list(text):
    """argparse type: "256x64x64x64,12x64x64x64" -> [(256, 64, 64, 64), (12, 64, 64, 64)]."""
    try:
        shapes = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(shape) != 4 or min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes BxCxHxW separated by commas, got {text!r}")
    return shapes


def gate_bytes(shape, dtype, pass_name):
    """Fewest bytes `pass_name` of one gate step moves for a hidden state of `shape` (B, C, H, W) in `dtype`."""
    return ELEMENTS_PER_N[pass_name] * math.prod(shape) * dtype.itemsize


def measure(backend, dtype_name, layout, shape, device, args, copy):
    """Fields of the three passes of one case, once its outputs match the reference (a wrong kernel posts nothing)."""
    if backend == "compile":
        torch._dynamo.reset()  # a fresh compile per case: no recompile limit, static shapes as a user gets them
        op = torch.compile(convlstm.lstm_gates_ref, backend=args.compile_backend, dynamic=False)
    else:
        op = convlstm.lstm_gates_ref if backend == "torch" else functools.partial(convlstm.lstm_gates, backend=backend)
    dtype, (b, c, h, w) = benchutil.DTYPES[dtype_name], shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator(device).manual_seed(0)
    gates, c_prev, grad_h, grad_c = (torch.randn(b, k * c, h, w, generator=gen, device=device)
                                     .to(dtype, memory_format=fmt) for k in (4, 1, 1, 1))
    gates.requires_grad_(), c_prev.requires_grad_()  # the forward builds its graph, as in training
    with torch.no_grad():
        err = max((got.float() - want).abs().max().item() for got, want in
                  zip(op(gates, c_prev), convlstm.lstm_gates_ref(gates.float(), c_prev.float())))
    if not err <= MAX_ABS_ERR[dtype_name]:
        raise AssertionError(f"outputs differ from lstm_gates_ref by {err:.3g} (allowed {MAX_ABS_ERR[dtype_name]})")
    outputs = op(gates, c_prev)  # "bwd" walks this one graph backward again and again
    fns = {"fwd": lambda: op(gates, c_prev),
           "bwd": lambda: torch.autograd.grad(outputs, (gates, c_prev), (grad_h, grad_c), retain_graph=True),
           "fwd+bwd": lambda: torch.autograd.grad(op(gates, c_prev), (gates, c_prev), (grad_h, grad_c))}
    records = []
    for pass_name, fn in fns.items():
        ms, iqr = benchutil.time_ms(fn, device, 0.02 if args.quick else 0.1)
        gbps = gate_bytes(shape, dtype, pass_name) / ms / 1e6
        records.append(dict(max_abs_err=err, ms=ms, ms_iqr=iqr, bytes=gate_bytes(shape, dtype, pass_name), gbps=gbps,
                            copy_fraction=gbps / copy, peak_mem_mb=peak_mem_mb(fn, device)))
    return records


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--backends", type=benchutil.comma_list(("torch", "compile", "triton", "cuda", "cpu_twin")),
                        help="comma-separated (default: every one that runs on the device)")
    parser.add_argument("--dtypes", type=benchutil.comma_list(tuple(benchutil.DTYPES)), help="default all; quick fp32")
    parser.add_argument("--layouts", type=benchutil.comma_list(LAYOUTS), help="default both; --quick nchw")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend for 'compile'")
    parser.add_argument("--shapes", type=shape_list, help="BxCxHxW,... (default: the device's SHAPES)")
    args, device = benchutil.parse(parser, argv, lambda device: ["torch", "compile"] + benchutil.fused_backends(device))
    copy = benchutil.copy_gbps(device, 2**24 if args.quick else 2**30 if device.type == "cuda" else 2**28)
    head = benchutil.header("gates", device, args, copy_gbps=copy, compile_backend=args.compile_backend)
    print(f"{head['device_name']}: copy {copy:.1f} GB/s (read + write)")
    grid = itertools.product(args.shapes or SHAPES["quick" if args.quick else device.type], args.dtypes or (
        ["fp32"] if args.quick else benchutil.DTYPES), args.layouts or LAYOUTS[:1 if args.quick else 2], args.backends)
    # torch.compile's cases last (each compiles afresh, seconds apiece): a time box cuts them, not the kernels'.
    grid = sorted(grid, key=lambda case: case[3] == "compile")
    cases = []
    for shape, dtype, layout, backend in grid:
        keys = [dict(backend=backend, dtype=dtype, layout=layout, shape=list(shape), **{"pass": p})
                for p in ELEMENTS_PER_N]
        cases.append((keys, functools.partial(measure, backend, dtype, layout, shape, device, args, copy)))
    return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
