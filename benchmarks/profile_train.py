"""profile_train: where one training step of the tutorial's model spends its time, kernel by kernel.

    python benchmarks/profile_train.py --device cuda --out profile_cuda.json
    python benchmarks/profile_train.py --device cpu --quick

bench_train's step (the tutorial's EncoderDecoderConvLSTM, its loss, Adam) in bf16 autocast (none on the CPU), for the
eager reference (backend torch) and each fused backend that runs here, under torch.profiler for a few steps after a
warm-up. Per case: the step's wall time, the device time of all its kernels (on the GPU; the host's operators on the
CPU), the share that leaves for launches and host gaps, time per category (convolution, gates, cat and casts, other
element-wise, optimizer, other) and the top kernels by time. From this the next performance step is chosen.
"""
from __future__ import annotations

import functools
import re
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import benchutil
import bench_train

STEPS = 3  # profiled steps after the warm-up; the figures are per step
TOP = 10
# (category, pattern on the kernel or operator name), first match wins. Names seen in cuDNN/cuBLAS and ATen kernels.
CATEGORIES = [
    ("gates", r"lstm_gates"),
    ("convolution", r"conv|cudnn|gemm|xmma|wgrad|dgrad|implicit|winograd|cutlass|sm\d\d_|nchwToNhwc|nhwcToNchw"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("cat and casts", r"\bcat\b|CatArray|cat_|copy|to_copy|_to_copy|convert|cast"),
    ("other element-wise", r"elementwise|vectorized|reduce|sigmoid|tanh|mul|add|fill|binary_cross|mse"),
]


def category(name):
    return next((label for label, pattern in CATEGORIES if re.search(pattern, name, re.I)), "other")


def measure(backend, amp, config, device):
    model, optimizer, x, target = bench_train.build(backend, config, device)
    step, _ = bench_train.make_step(model, optimizer, x, target, amp, device)
    for _ in range(3):  # Adam's state, Triton's compiles, cuDNN's choices
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(STEPS):
            step()
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / STEPS
    on_device = device.type == "cuda"
    events = [e for e in prof.key_averages()
              if (e.device_type == DeviceType.CUDA) == on_device and (on_device or e.key.startswith("aten::"))]
    self_us = (lambda e: e.self_device_time_total) if on_device else (lambda e: e.self_cpu_time_total)
    kernels = sorted(((e.key, self_us(e) / 1e3 / STEPS, e.count // STEPS) for e in events), key=lambda k: -k[1])
    busy_ms = sum(ms for _, ms, _ in kernels)
    by_category = {}
    for name, ms, _ in kernels:
        by_category[category(name)] = by_category.get(category(name), 0.0) + ms
    return [dict(backend_resolved=bench_train.convlstm.ops.lstm_gates.resolve(backend, device)[0], ms=wall_ms,
                 kernel_ms=busy_ms, launches=sum(n for _, _, n in kernels),
                 idle_fraction=max(0.0, 1 - busy_ms / wall_ms) if on_device else None,
                 categories={k: round(v, 4) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
                 top=[dict(name=name[:120], ms=round(ms, 4), calls=calls, category=category(name))
                      for name, ms, calls in kernels[:TOP]])]


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--backends", type=benchutil.comma_list(("torch", "triton", "cuda", "cpu_twin")),
                        help="comma-separated (default: torch and every fused backend that runs here)")
    parser.add_argument("--amp", choices=bench_train.AMPS, help="default bf16 on a GPU, none on the CPU")
    args, device = benchutil.parse(parser, argv, lambda device: ["torch"] + benchutil.fused_backends(device))
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    config_name = "quick" if args.quick else "tutorial" if device.type == "cuda" else "cpu"
    config = bench_train.CONFIGS[config_name]
    head = benchutil.header("profile", device, args, config_name=config_name, steps=STEPS)
    print(f"{head['device_name']}: tutorial model, config {config_name} {config}, amp {amp}")
    cases = [([dict(model="tutorial", backend=backend, amp=amp, config=config)],
              functools.partial(measure, backend, amp, config, device)) for backend in args.backends]
    return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
