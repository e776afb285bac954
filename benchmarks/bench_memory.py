"""bench_memory: the memory a training step of EncoderDecoderConvLSTM needs, per backend, against the eager reference.

    python benchmarks/bench_memory.py --device cpu --out benchmarks/results/memory_cpu.json
    python benchmarks/bench_memory.py --device cuda --config tutorial

Memory, unlike time, is the same on any machine for the same tensors: on the CPU "cpu_twin" keeps for backward what
"cuda" keeps. On bench_train's step once Adam's state exists: saved_mb, what autograd keeps over a forward (each
storage once, parameters left out), and peak_mem_mb over a step, each also over the eager reference's at its amp.
"""
from __future__ import annotations

import functools
import sys

import torch

import bench_train
import benchutil
import convlstm
from convlstm.memory import peak_mem_mb, saved_bytes


def measure(backend, amp, config, device, reference):
    model, optimizer, x, target = bench_train.build(backend, config, device)
    step, _ = bench_train.make_step(model, optimizer, x, target, amp, device)
    for _ in range(2):
        step()

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            model(x, future_seq=config["t_out"])
    record = dict(backend_resolved=convlstm.ops.lstm_gates.resolve(backend, device)[0],
                  saved_mb=saved_bytes(forward, held=list(model.parameters())) / 2**20,
                  peak_mem_mb=peak_mem_mb(step, device))
    if backend == "torch":
        reference[amp] = record
    if amp in reference:  # the reference runs first at each amp
        record.update(saved_x_reference=record["saved_mb"] / reference[amp]["saved_mb"],
                      peak_x_reference=record["peak_mem_mb"] / reference[amp]["peak_mem_mb"])
    return [record]


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--config", choices=tuple(bench_train.CONFIGS), help="default: tutorial on cuda, cpu on cpu")
    parser.add_argument("--backends", type=benchutil.comma_list(convlstm.ops.lstm_gates.BACKENDS),
                        help="comma-separated (default: torch and the fused backends, Triton's interpreter excepted)")
    parser.add_argument("--amp", type=benchutil.comma_list(bench_train.AMPS), help="none, bf16 or none,bf16 (default)")
    # Triton's interpreter only when named: minutes a step
    args, device = benchutil.parse(parser, argv, convlstm.available_backends,
                                   lambda device: benchutil.fused_backends(device, timed=False))
    config_name = args.config or ("quick" if args.quick else "tutorial" if device.type == "cuda" else "cpu")
    config = bench_train.CONFIGS[config_name]
    head = benchutil.header("memory", device, args, config_name=config_name)
    print(f"{head['device_name']}: config {config_name} {config}; memory of one training step")
    backends = ["torch"] + [name for name in args.backends if name != "torch"]  # every share is of the reference
    reference = {}
    cases = [([dict(backend=backend, amp=amp, config=config)],
              functools.partial(measure, backend, amp, config, device, reference))
             for amp in args.amp or bench_train.AMPS for backend in backends]
    return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
