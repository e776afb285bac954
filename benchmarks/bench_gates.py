"""bench_gates: one ConvLSTM gate step (`lstm_gates`) forward, backward and both, on every backend that runs here.

    python benchmarks/bench_gates.py --device cuda --out benchmarks/results/gates_cuda.json
    python benchmarks/bench_gates.py --device cpu --quick

Backends: "torch" (the eager reference `lstm_gates_ref`), "compile" (torch.compile of that reference, one fresh
compile per case, static shapes), then the fused backends (benchutil.fused_backends: on a GPU every backend
`convlstm.available_backends` lists besides "torch", e.g. "cuda" and "triton"; on the CPU neither Triton's
interpreter nor the "cpu_twin" debugging path, which are correctness tools).

Cases: dtypes fp32, bf16, fp16; layouts NCHW and channels_last; hidden-state shapes (B, C, H, W):
  cuda: (256, 64, 64, 64), (12, 64, 64, 64) the tutorial's step, and (64, 64, 64, 64);
  cpu:  (4, 32, 32, 32) and (12, 64, 32, 32), the tutorial's batch and channels at half its resolution, so a full
        run fits in minutes on 2 cores; --quick: (2, 8, 16, 16), fp32, NCHW.
The forward runs with inputs that require grad, as in training. No peephole (the model's default). Before timing,
each backend's outputs are compared with the reference in float32 (`max_abs_err`): a mismatch fails the case.

Bytes each pass must move at least, with n = B*C*H*W elements of the hidden state and every tensor in one dtype:
  forward:  reads gates (4n) and c_prev (n); writes h_next (n) and c_next (n)             -> 7n elements
  backward: reads grad_h_next (n), grad_c_next (n), gates (4n) and c_prev (n), everything else recomputed from them;
            writes grad_gates (4n) and grad_c_prev (n)                                     -> 12n elements
  forward+backward: both passes, as two kernels must                                      -> 19n elements
GB/s is those bytes over the median time; on the GPU `copy_fraction` is GB/s over the device-to-device copy
bandwidth measured at the start of the same run (benchutil.copy_gbps).
"""
from __future__ import annotations

import argparse
import sys

import torch

import benchutil
import convlstm

PASSES = ("fwd", "bwd", "fwd+bwd")
ELEMENTS_PER_N = {"fwd": 7, "bwd": 12, "fwd+bwd": 19}
LAYOUTS = ("nchw", "channels_last")
# Largest first (the targets are judged there), then the tutorial's: a time budget cuts the middle one first.
SHAPES = {"cuda": [(256, 64, 64, 64), (12, 64, 64, 64), (64, 64, 64, 64)],
          "cpu": [(4, 32, 32, 32), (12, 64, 32, 32)],
          "quick": [(2, 8, 16, 16)]}


def gate_bytes(shape, dtype, pass_name):
    """Fewest bytes `pass_name` of one gate step must move for a hidden state of `shape` (B, C, H, W) in `dtype`."""
    if pass_name not in ELEMENTS_PER_N:
        raise ValueError(f"unknown pass {pass_name!r}: expected one of {', '.join(PASSES)}")
    b, c, h, w = shape
    return ELEMENTS_PER_N[pass_name] * b * c * h * w * torch.empty((), dtype=dtype).element_size()


def backends_for(device):
    """Benchmarkable backends on `device`: the reference, its compile, then the fused kernels that run there."""
    return ["torch", "compile"] + benchutil.fused_backends(device)


def gate_op(backend, compile_backend):
    """The function to time: (gates, c_prev) -> (h_next, c_next)."""
    if backend == "torch":
        return convlstm.lstm_gates_ref
    if backend == "compile":
        torch._dynamo.reset()  # a fresh compile per case: no recompile limit, static shapes as a user would get
        return torch.compile(convlstm.lstm_gates_ref, backend=compile_backend, dynamic=False)
    return lambda gates, c_prev: convlstm.lstm_gates(gates, c_prev, backend=backend)


def make_inputs(shape, dtype, layout, device):
    b, c, h, w = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(channels):
        x = torch.randn(b, channels, h, w, generator=gen, device=device, dtype=torch.float32)
        return x.to(dtype=dtype, memory_format=fmt)

    gates, c_prev = randn(4 * c).requires_grad_(), randn(c).requires_grad_()
    return gates, c_prev, randn(c), randn(c)  # the last two: grad_h_next, grad_c_next


def pass_fn(op, pass_name, gates, c_prev, grad_h, grad_c):
    if pass_name == "fwd":
        return lambda: op(gates, c_prev)
    if pass_name == "fwd+bwd":
        def fwd_bwd():
            h_next, c_next = op(gates, c_prev)
            return torch.autograd.grad((h_next, c_next), (gates, c_prev), (grad_h, grad_c))
        return fwd_bwd
    h_next, c_next = op(gates, c_prev)  # one graph, walked backward again and again
    return lambda: torch.autograd.grad((h_next, c_next), (gates, c_prev), (grad_h, grad_c), retain_graph=True)


# Largest |output - float32 reference| a backend may show before its timings are refused: outputs are O(1)
# (|h| < 1, |c| < |c_prev| + 1), so these are a few units in the last place of each storage dtype.
MAX_ABS_ERR = {"fp32": 1e-4, "bf16": 6e-2, "fp16": 8e-3}


def check_outputs(op, gates, c_prev, dtype_name):
    """Max |op - lstm_gates_ref in float32| over h_next and c_next; raises if over MAX_ABS_ERR (a fast wrong
    kernel must not post a number)."""
    with torch.no_grad():
        got = op(gates, c_prev)
        want = convlstm.lstm_gates_ref(gates.float(), c_prev.float())
        err = max((g.float() - w).abs().max().item() for g, w in zip(got, want))
    if not err <= MAX_ABS_ERR[dtype_name]:
        raise AssertionError(f"outputs differ from lstm_gates_ref by {err:.3g} (allowed {MAX_ABS_ERR[dtype_name]})")
    return err


def run_case(backend, dtype_name, layout, shape, device, args, copy_gbps):
    """Records for the three passes of one (backend, dtype, layout, shape)."""
    dtype = benchutil.DTYPES[dtype_name]
    op = gate_op(backend, args.compile_backend)
    inputs = make_inputs(shape, dtype, layout, device)
    max_abs_err = check_outputs(op, inputs[0], inputs[1], dtype_name)
    records = []
    for pass_name in PASSES:
        record = dict(backend=backend, dtype=dtype_name, layout=layout, shape=list(shape), **{"pass": pass_name})
        fn = pass_fn(op, pass_name, *inputs)
        ms, spread = benchutil.time_ms(fn, device, seconds=0.03 if args.quick else 0.1)
        nbytes = gate_bytes(shape, dtype, pass_name)
        gbps = nbytes / (ms * 1e-3) / 1e9
        record.update(status="ok", max_abs_err=max_abs_err, ms=ms, ms_spread=spread, bytes=nbytes, gbps=gbps,
                      copy_fraction=gbps / copy_gbps, peak_mem_mb=benchutil.peak_mem_mb(fn, device))
        records.append(record)
    return records


COLUMNS = [("backend", "backend", ""), ("dtype", "dtype", ""), ("layout", "layout", ""), ("shape", "shape", ""),
           ("pass", "pass", ""), ("ms", "ms", ".4f"), ("GB/s", "gbps", ".1f"), ("copy", "copy_fraction", ".0%"),
           ("peak MiB", "peak_mem_mb", ".1f"), ("status", "status", "")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="See the module docstring for the "
                                     "shapes and the byte counts.")
    benchutil.add_common_args(parser)
    names = ("torch", "compile") + tuple(name for name in convlstm.ops.lstm_gates.backends.BACKENDS if name not in ("auto", "torch"))
    parser.add_argument("--backends", type=benchutil.comma_list(names),
                        help="comma-separated subset (default: every one that runs on the device)")
    parser.add_argument("--dtypes", type=benchutil.comma_list(tuple(benchutil.DTYPES)),
                        help="comma-separated subset of fp32,bf16,fp16 (default all; --quick: fp32)")
    parser.add_argument("--layouts", type=benchutil.comma_list(LAYOUTS),
                        help="comma-separated subset of nchw,channels_last (default both; --quick: nchw)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for 'compile' (default inductor; the tests use aot_eager)")
    args = parser.parse_args(argv)
    device = benchutil.check_common_args(parser, args)
    backends = benchutil.check_backends(parser, args.backends, backends_for(device), device)
    dtypes = args.dtypes or (["fp32"] if args.quick else list(benchutil.DTYPES))
    layouts = args.layouts or (["nchw"] if args.quick else list(LAYOUTS))
    shapes = SHAPES["quick" if args.quick else device.type]

    head = benchutil.header("gates", device, args)
    head["copy_gbps"] = benchutil.copy_gbps(device, 2**24 if args.quick else None)
    head["compile_backend"] = args.compile_backend
    print(f"{head['device_name']}: copy bandwidth {head['copy_gbps']:.1f} GB/s (read + write)", flush=True)
    budget = benchutil.Budget(args.budget_s)
    results = []
    for shape in shapes:
        for dtype_name in dtypes:
            for layout in layouts:
                for backend in backends:
                    case = dict(backend=backend, dtype=dtype_name, layout=layout, shape=list(shape))
                    if budget.spent():
                        results += [dict(case, status="skipped", reason="time budget", **{"pass": p}) for p in PASSES]
                        continue
                    try:
                        records = run_case(backend, dtype_name, layout, shape, device, args, head["copy_gbps"])
                    except Exception as error:  # keep the other cases' numbers; the exit code says it failed
                        records = [dict(case, status="error", error=f"{type(error).__name__}: {error}",
                                        **{"pass": p}) for p in PASSES]
                    results += records
                    print(benchutil.format_table(records, COLUMNS).split("\n", 2)[-1], flush=True)
                    benchutil.write_json(args.out, head, results)
    return benchutil.finish("", head, results, COLUMNS, args.out)


if __name__ == "__main__":
    sys.exit(main())
