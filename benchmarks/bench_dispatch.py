"""bench_dispatch: host time of one `lstm_gates` call and of one ConvLSTMCell step, forward and forward+backward, on a
one-element hidden state, where the kernels do almost nothing and what is timed is Python, dispatch and launches.

    python benchmarks/bench_dispatch.py --device cuda --out benchmarks/results/dispatch_cuda.json
    python benchmarks/bench_dispatch.py --device cpu --threads 1

Why: the tutorial's training step makes 80 gate calls forward and 80 backward per batch (20 time steps x 4 cells),
each next to a convolution that a GPU finishes in tens of microseconds, so a step can be bound by the host. A fused
backend must not cost the host more than the ~10 eager ops it replaces, and the whole fused cell step (conv_cat
and its saved-tensor hooks around the convolution, then the gates) not more than the eager one.

Ops and paths timed:
  lstm_gates  reference            lstm_gates_ref, eager PyTorch (what backend "torch" runs)
              <backend>            the public lstm_gates on a fused backend: eager calls go through
                                   op.fused_op's autograd.Function, which calls the kernels directly
              <backend>:custom_op  the registered custom op with its autograd, called eagerly: what torch.compile
                                   traces, and what eager calls used before fused_op
  cell        reference            ConvLSTMCell(backend="torch"): the tutorial's cat, convolution and gate math
              <backend>            ConvLSTMCell on a fused backend: conv_cat, then lstm_gates
              each with amp none and bf16 (autocast: conv_cat's casts and their cache are part of the cost)
Fused backends: every one that runs on the device, except Triton's interpreter on the CPU (it runs kernels in
Python). On the CPU that leaves "cpu_twin", whose kernel is a plain C++ loop: its host cost is what any compiled
extension pays. On the CPU a cell step's time also holds the convolution's own work at one element (oneDNN's
per-call cost), the same on both paths.

Time: `reps` calls back to back, then one device synchronize, divided by `reps` (the rate a host-bound loop
runs at); the median over 7 such rounds, with the spread (interquartile range over median). x_reference: over the
reference of the same op, amp and pass.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

import benchutil
import convlstm
from convlstm.ops.lstm_gates.op import prepare

PASSES = ("fwd", "fwd+bwd")
CELL_AMPS = ("none", "bf16")
ROUNDS = 7


def fused_runs(device):
    """(name, callable) of the fused backends timed on `device`: the public path and the custom op path."""
    runs = []
    for backend in benchutil.compiled_backends(device):
        custom_op = convlstm.ops.lstm_gates.backends.fused_run(backend).custom_op
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


def cells(device):
    """(name, ConvLSTMCell) with the same weights: the eager reference, then each fused backend timed on `device`."""
    def cell(backend):
        torch.manual_seed(0)
        return convlstm.ConvLSTMCell(1, 1, 3, True, backend=backend).to(device)
    return [("reference", cell("torch"))] + [(b, cell(b)) for b in benchutil.compiled_backends(device)]


def pass_fn(op, pass_name, device):
    gates = torch.randn(1, 4, 1, 1, device=device, requires_grad=True)
    c_prev = torch.randn(1, 1, 1, 1, device=device, requires_grad=True)
    grads = (torch.ones(1, 1, 1, 1, device=device), torch.ones(1, 1, 1, 1, device=device))
    if pass_name == "fwd":
        return lambda: op(gates, c_prev)
    return lambda: torch.autograd.grad(op(gates, c_prev), (gates, c_prev), grads)


def cell_pass_fn(cell, pass_name, amp, device):
    """One step of `cell` on x, h, c of one element (all needing gradients, as inside a sequence)."""
    x, h, c = (torch.randn(1, 1, 1, 1, device=device, requires_grad=True) for _ in range(3))
    inputs = (x, h, c, *cell.parameters())
    grads = (torch.ones(1, 1, 1, 1, device=device), torch.ones(1, 1, 1, 1, device=device))

    def forward():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            return cell(x, (h, c))
    if pass_name == "fwd":
        return forward
    return lambda: torch.autograd.grad(forward(), inputs, grads)


COLUMNS = [("op", "op", ""), ("path", "path", ""), ("amp", "amp", ""), ("pass", "pass", ""), ("us/call", "us", ".1f"),
           ("spread", "us_spread", ".0%"), ("x reference", "x_reference", ".2f"), ("status", "status", "")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchutil.add_common_args(parser)
    args = parser.parse_args(argv)
    device = benchutil.check_common_args(parser, args)
    reps = 50 if args.quick else 500
    head = benchutil.header("dispatch", device, args)
    # (record, callable): each op, path, amp and pass
    cases = [(dict(op="lstm_gates", path=path, amp="none", **{"pass": pass_name}), pass_fn(op, pass_name, device))
             for path, op in [("reference", convlstm.lstm_gates_ref)] + fused_runs(device) for pass_name in PASSES]
    cases += [(dict(op="cell", path=path, amp=amp, **{"pass": pass_name}), cell_pass_fn(cell, pass_name, amp, device))
              for amp in CELL_AMPS for path, cell in cells(device) for pass_name in PASSES]
    for _, fn in cases:  # build or load every backend (cpu_twin compiles on first use) before the budget starts
        with contextlib.suppress(Exception):  # a path that fails here fails again below, and is recorded there
            fn()
    budget = benchutil.Budget(args.budget_s)
    results, reference = [], {}
    for record, fn in cases:
        if budget.spent():
            results.append(dict(record, status="skipped", reason="time budget"))
            continue
        try:
            us, spread = host_us(fn, device, reps)
        except Exception as error:  # keep the other paths' numbers; the exit code says it failed
            results.append(dict(record, status="error", error=f"{type(error).__name__}: {error}"))
            continue
        key = record["op"], record["amp"], record["pass"]
        if record["path"] == "reference":
            reference[key] = us
        ratio = {"x_reference": us / reference[key]} if key in reference else {}
        results.append(dict(record, status="ok", us=us, us_spread=spread, **ratio))
        benchutil.write_json(args.out, head, results)
    title = f"{head['device_name']}: host time per call (lstm_gates, ConvLSTMCell step), one-element state"
    return benchutil.finish(title, head, results, COLUMNS, args.out)


if __name__ == "__main__":
    sys.exit(main())
