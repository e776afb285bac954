"""bench_memory: the memory a training step of EncoderDecoderConvLSTM needs, per backend, against the eager reference.

    python benchmarks/bench_memory.py --device cpu --out benchmarks/results/memory_cpu.json
    python benchmarks/bench_memory.py --device cuda --config tutorial

Memory, unlike time, comes out the same on any machine for the same tensors, so this runs the fused backends where
bench_train would not time them: on the CPU "cpu_twin" keeps for backward exactly what "cuda" keeps (the same
autograd.Function around kernels with the same outputs, the same conv_cat and conv_frame around the convolutions),
and Triton's interpreter what compiled Triton keeps.
The interpreter is left out by default on the CPU (minutes per step at these sizes); ask for it with --backends.

Per backend and amp (the step and configurations of bench_train.py):
  saved_mb     what autograd keeps over one forward, each storage once, parameters left out (they are held anyway;
               the eager path under autocast keeps bf16 copies of the weights, which count)
  peak_mem_mb  the most allocated at once during a whole training step above what was allocated before it
               (benchutil.peak_mem_mb; on the CPU it can fall in the forward, e.g. at the last convolution's
               buffers: convlstm/ops/README.md, "Memory kept for backward")
  x_reference  both as a share of the eager reference's (backend "torch", same amp)
"""
from __future__ import annotations

import argparse
import sys

import torch

import bench_train
import benchutil
import convlstm


def saved_mb(model, x, amp, t_out, device):
    """MiB of the distinct storages autograd keeps over one forward, parameters left out."""
    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            model(x, future_seq=t_out)

    return benchutil.saved_bytes(forward, held=list(model.parameters())) / 2**20


def run_case(backend, amp, config, device, args):
    model, optimizer, x, target = bench_train.build(backend, False, False, config, device, args)
    step, _ = bench_train.make_step(model, optimizer, x, target, amp, config["t_out"], device)
    for _ in range(2):  # Adam's state exists before the measured step, as in a long run
        step()
    return dict(status="ok", saved_mb=saved_mb(model, x, amp, config["t_out"], device),
                peak_mem_mb=benchutil.peak_mem_mb(step, device))


COLUMNS = [("backend", "backend", ""), ("amp", "amp", ""), ("saved MiB", "saved_mb", ".1f"),
           ("x ref", "saved_x_reference", ".3f"), ("peak MiB", "peak_mem_mb", ".1f"),
           ("x ref", "peak_x_reference", ".3f"), ("status", "status", "")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchutil.add_common_args(parser)
    parser.add_argument("--config", choices=tuple(bench_train.CONFIGS),
                        help="model and batch size (default: tutorial on cuda, cpu on cpu, quick with --quick)")
    parser.add_argument("--backends", type=benchutil.comma_list(convlstm.ops.lstm_gates.backends.BACKENDS),
                        help="comma-separated subset (default: torch and every fused backend that runs here, "
                             "Triton's interpreter excepted)")
    parser.add_argument("--amp", type=benchutil.comma_list(bench_train.AMPS), help="comma-separated subset of "
                        "none,bf16")
    args = parser.parse_args(argv)
    device = benchutil.check_common_args(parser, args)
    requested = benchutil.check_backends(parser, args.backends, convlstm.available_backends(device), device)
    # the eager reference first: every share is of it
    backends = ["torch"] + [name for name in (requested if args.backends else benchutil.compiled_backends(device))
                            if name != "torch"]
    config_name = args.config or ("quick" if args.quick else "tutorial" if device.type == "cuda" else "cpu")
    config = bench_train.CONFIGS[config_name]
    args.compile_scope, args.compile_backend = "cell", "inductor"  # what bench_train.build reads; no compile here

    head = benchutil.header("memory", device, args)
    head["config_name"] = config_name
    budget = benchutil.Budget(args.budget_s)
    results, reference = [], {}
    for amp in args.amp or list(bench_train.AMPS):
        for backend in backends:
            record = dict(backend=backend, backend_resolved=convlstm.ops.lstm_gates.backends.resolve(backend, device)[0],
                          amp=amp, config=dict(config))
            if budget.spent():
                record.update(status="skipped", reason="time budget")
            else:
                try:
                    record.update(run_case(backend, amp, config, device, args))
                except Exception as error:  # keep the other cases' numbers; the exit code says it failed
                    record.update(status="error", error=f"{type(error).__name__}: {error}")
            if record["status"] == "ok" and backend == "torch":
                reference[amp] = record
            if record["status"] == "ok" and amp in reference:
                record["saved_x_reference"] = record["saved_mb"] / reference[amp]["saved_mb"]
                record["peak_x_reference"] = record["peak_mem_mb"] / reference[amp]["peak_mem_mb"]
            results.append(record)
            benchutil.write_json(args.out, head, results)
    return benchutil.finish(f"{head['device_name']}: config {config_name} {config}; memory of one training step",
                            head, results, COLUMNS, args.out)


if __name__ == "__main__":
    sys.exit(main())
