"""bench_dispatch: host time of one `lstm_gates` call, forward and forward+backward, on a one-element hidden state,
where the kernels do almost nothing and what is timed is Python, dispatch and kernel launches.

    python benchmarks/bench_dispatch.py --device cuda --out benchmarks/results/dispatch_cuda.json
    python benchmarks/bench_dispatch.py --device cpu --threads 1

Why: the tutorial's training step makes 80 gate calls forward and 80 backward per batch (20 time steps x 4 cells),
each next to a convolution that a GPU finishes in tens of microseconds, so a step can be bound by the host. A fused
backend must not cost the host more than the ~10 eager ops it replaces.

Paths timed:
  reference            lstm_gates_ref, eager PyTorch (what backend "torch" runs)
  <backend>            the public lstm_gates on a fused backend: eager calls go through lstm_gates_op.fused_op's
                       autograd.Function, which calls the kernels directly
  <backend>:custom_op  the registered custom op with its autograd, called eagerly: what torch.compile traces, and
                       what eager calls used before fused_op
Fused backends: every one that runs on the device, except Triton's interpreter on the CPU (it runs kernels in
Python). On the CPU that leaves "cpu_twin", whose kernel is a plain C++ loop: its host cost is what any compiled
extension pays.

Time: `reps` calls back to back, then one device synchronize, divided by `reps` (the rate a host-bound loop
runs at); the median over 7 such rounds, with the spread (interquartile range over median).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

import benchutil
import convlstm
from convlstm.lstm_gates_op import prepare

PASSES = ("fwd", "fwd+bwd")
ROUNDS = 7


def fused_runs(device):
    """(name, callable) of the fused backends timed on `device`: the public path and the custom op path."""
    runs = []
    for backend in benchutil.compiled_backends(device):
        custom_op = convlstm.backends.fused_run(backend).custom_op
        runs.append((backend, lambda g, c, b=backend: convlstm.lstm_gates(g, c, backend=b)))
        runs.append((f"{backend}:custom_op", lambda g, c, op=custom_op: op(*prepare(g, c, None, None, None))))
    return runs


def host_us(fn, device, reps):
    """Median and spread of the time per call in microseconds, `reps` calls per timed round."""
    for _ in range(max(reps // 10, 5)):
        fn()
    benchutil.sync(device)
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        benchutil.sync(device)
        samples.append((time.perf_counter() - start) / reps * 1e6)
    return benchutil.median_and_spread(samples)


def pass_fn(op, pass_name, device):
    gates = torch.randn(1, 4, 1, 1, device=device, requires_grad=True)
    c_prev = torch.randn(1, 1, 1, 1, device=device, requires_grad=True)
    grads = (torch.ones(1, 1, 1, 1, device=device), torch.ones(1, 1, 1, 1, device=device))
    if pass_name == "fwd":
        return lambda: op(gates, c_prev)
    return lambda: torch.autograd.grad(op(gates, c_prev), (gates, c_prev), grads)


COLUMNS = [("path", "path", ""), ("pass", "pass", ""), ("us/call", "us", ".1f"), ("spread", "us_spread", ".0%"),
           ("x reference", "x_reference", ".2f"), ("status", "status", "")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchutil.add_common_args(parser)
    args = parser.parse_args(argv)
    device = benchutil.check_common_args(parser, args)
    reps = 50 if args.quick else 500
    head = benchutil.header("dispatch", device, args)
    paths = [("reference", convlstm.lstm_gates_ref)] + fused_runs(device)
    for _, op in paths:  # build or load every backend (cpu_twin compiles on first use) before the budget starts
        with contextlib.suppress(Exception):  # a path that fails here fails again below, and is recorded there
            pass_fn(op, "fwd+bwd", device)()
    budget = benchutil.Budget(args.budget_s)
    results, reference = [], {}
    for path, op in paths:
        for pass_name in PASSES:
            record = {"path": path, "pass": pass_name}
            if budget.spent():
                results.append(dict(record, status="skipped", reason="time budget"))
                continue
            try:
                us, spread = host_us(pass_fn(op, pass_name, device), device, reps)
            except Exception as error:  # keep the other paths' numbers; the exit code says it failed
                results.append(dict(record, status="error", error=f"{type(error).__name__}: {error}"))
                continue
            reference.setdefault(pass_name, us)
            results.append(dict(record, status="ok", us=us, us_spread=spread,
                                x_reference=us / reference[pass_name]))
            benchutil.write_json(args.out, head, results)
    return benchutil.finish(f"{head['device_name']}: host time per lstm_gates call, one-element state", head,
                            results, COLUMNS, args.out)


if __name__ == "__main__":
    sys.exit(main())
