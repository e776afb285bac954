"""bench_dispatch: host time of one `lstm_gates` call and of one ConvLSTMCell step, forward and forward+backward, on a
one-element hidden state, where the kernels do almost nothing and what is timed is Python, dispatch and launches.

    python benchmarks/bench_dispatch.py --device cuda --out benchmarks/results/dispatch_cuda.json
    python benchmarks/bench_dispatch.py --device cpu --threads 1

Why: a tutorial training step makes 80 gate calls each way beside convolutions a GPU finishes in tens of
microseconds, so the host can bound it. Paths: "reference" (eager), "<backend>" (the public op) and "<backend>:
custom_op" (the custom op torch.compile traces); cell steps at amp none and bf16. x_reference: over the reference of
the same op, amp and pass.
"""
from __future__ import annotations

import functools
import sys

import torch

import benchutil
import convlstm
from convlstm.ops.lstm_gates.backends import fused_run
from convlstm.ops.lstm_gates.op import prepare


def cell_step(cell, x, h, c, amp):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        return cell(x, (h, c))


def measure(forward, inputs, pass_name, key, device, args, reference):
    ones = (torch.ones(1, 1, 1, 1, device=device),) * 2  # the gradients of the two outputs
    fn = forward if pass_name == "fwd" else lambda: torch.autograd.grad(forward(), inputs, ones)
    us, iqr = (t * 1e3 for t in benchutil.time_ms(fn, device, 0.01 if args.quick else 0.5, host=True))
    if key["path"] == "reference":  # measured first for each op, amp and pass
        reference[key["op"], key["amp"], pass_name] = us
    ref = reference.get((key["op"], key["amp"], pass_name))
    return [dict(us=us, us_iqr=iqr, **({"x_reference": us / ref} if ref else {}))]


def main(argv=None):
    args, device = benchutil.parse(benchutil.parser(__doc__), argv)
    head = benchutil.header("dispatch", device, args)
    print(f"{head['device_name']}: host time per call (lstm_gates, ConvLSTMCell step), one-element state")
    fused = benchutil.fused_backends(device, timed=False)
    x, h, c, gates, c_prev = (torch.randn(1, k, 1, 1, device=device, requires_grad=True) for k in (1, 1, 1, 4, 1))
    paths = [("reference", convlstm.lstm_gates_ref)] + [path for backend in fused for path in (
        (backend, functools.partial(convlstm.lstm_gates, backend=backend)),
        (f"{backend}:custom_op", lambda g, c, op=fused_run(backend).custom_op: op(*prepare(g, c, None, None, None))))]
    fns = [(dict(op="lstm_gates", path=path, amp="none"), functools.partial(op, gates, c_prev), (gates, c_prev))
           for path, op in paths]
    for amp in ("none", "bf16"):
        for backend in ["torch"] + fused:
            torch.manual_seed(0)  # the same weights on every path
            cell = convlstm.ConvLSTMCell(1, 1, 3, True, backend=backend).to(device)
            fns.append((dict(op="cell", path="reference" if backend == "torch" else backend, amp=amp),
                        functools.partial(cell_step, cell, x, h, c, amp), (x, h, c, *cell.parameters())))
    reference = {}
    cases = [([dict(key, **{"pass": p})], functools.partial(measure, forward, inputs, p, key, device, args, reference))
             for key, forward, inputs in fns for p in ("fwd", "fwd+bwd")]
    return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
