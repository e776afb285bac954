"""bench_train: one whole training step (forward, backward, Adam) of EncoderDecoderConvLSTM, per backend and option.

    python benchmarks/bench_train.py --device cuda --out benchmarks/results/train_cuda.json
    python benchmarks/bench_train.py --device cpu --quick

The step is the tutorial's: x (B, 10, 1, H, W) in [0, 1] -> model(x, future_seq=10) -> binary cross-entropy against
(B, 1, 10, H, W) targets in [0, 1] -> backward -> Adam(lr=1e-4).step(). The loss is computed in float32 outside
autocast (binary_cross_entropy is refused under autocast).

Configurations (--config; default tutorial on cuda, cpu on cpu):
  tutorial: batch 12, nf 64, 64x64, 10 in 10 out (the tutorial's; about 3.5 TFLOP per step)
  cpu:      batch 4, nf 16, 32x32, 10 in 10 out (about 200 times fewer FLOPs: the tutorial's step takes over half a
            minute on 2 CPU cores, so a full CPU run of every option would take hours)
  quick:    batch 2, nf 8, 16x16, 4 in 4 out (the --quick smoke run)

Grid: backend "torch" (the eager reference), the fused backends (benchutil.fused_backends) and "auto" (the package
default) where it is not one of them already; x compile off/on
(torch.compile of each ConvLSTMCell, the unit repeated 40 times a step: compiling the whole model unrolls all 20
time steps and takes minutes; --compile-scope model does that instead); x channels_last off/on (the Conv2d weights
and the input frames); x amp none/bf16 (autocast; no GradScaler, which only fp16 needs).

Every configuration other than its eager reference (see reference_options) is also timed against that reference in
one window, alternating calls: ms_paired, reference_ms_paired (medians) and speedup_vs_reference (their ratio,
reference over case). Timings taken one case after another drift by 10-30% on a shared CPU; paired ones do not.

Each configuration's first loss (initial weights, same data) must match the eager reference's at the same amp
(LOSS_RTOL), else the case fails. Reported per configuration: median step time and its spread, sequences/s (batch / step time), peak memory (see
benchutil), the first steps' time (compile included), and model FLOPs utilisation: conv FLOPs per step,
2*B*H*W*Cin*Cout*kh*kw per conv per time step (the Conv3d head: per frame), x3 for forward + backward, over the step
time, against the dense matmul rate measured at the start of the same run (bf16 for amp bf16; float32 with TF32
allowed for amp none, as cuDNN runs float32 convolutions by default).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import benchutil
import convlstm

CONFIGS = {"tutorial": dict(batch=12, nf=64, size=64, t_in=10, t_out=10),
           "cpu": dict(batch=4, nf=16, size=32, t_in=10, t_out=10),
           "quick": dict(batch=2, nf=8, size=16, t_in=4, t_out=4)}
AMPS = ("none", "bf16")


def train_step_flops(model, batch, size, t_in, t_out):
    """Conv FLOPs of one training step (forward + backward = 3x forward), counted as in the module docstring."""
    def conv_flops(conv, steps):
        kernel = math.prod(conv.kernel_size)
        return 2 * batch * size * size * conv.in_channels * conv.out_channels * kernel * steps

    forward = (conv_flops(model.encoder_1_convlstm.conv, t_in) + conv_flops(model.encoder_2_convlstm.conv, t_in)
               + conv_flops(model.decoder_1_convlstm.conv, t_out) + conv_flops(model.decoder_2_convlstm.conv, t_out)
               + conv_flops(model.decoder_CNN, t_out))
    return 3 * forward


def backends_for(device):
    """The eager reference, the fused backends, and "auto" unless it is one of those already (on a GPU it is)."""
    fused = benchutil.fused_backends(device)
    auto = [] if convlstm.ops.lstm_gates.backends.resolve("auto", device)[0] in fused else ["auto"]
    return ["torch"] + auto + fused


def build(backend, compile_on, channels_last, config, device, args):
    """Model, optimizer and one batch, seeded so every configuration starts from the same weights and data."""
    torch.manual_seed(0)
    model = convlstm.EncoderDecoderConvLSTM(nf=config["nf"], in_chan=1, backend=backend).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, s = config["batch"], config["size"]
    x = torch.rand(b, config["t_in"], 1, s, s, device=device)
    target = torch.rand(b, 1, config["t_out"], s, s, device=device)
    if channels_last:
        # Conv2d weights only: the Conv3d head has no 4-D layout; frames are sliced from x one time step at a time.
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if compile_on:
        if args.compile_scope == "model":
            model.compile(backend=args.compile_backend)
        else:
            for module in model.modules():
                if isinstance(module, convlstm.ConvLSTMCell):
                    module.compile(backend=args.compile_backend)
    return model, optimizer, x, target


def reference_options(backend, compile_on, channels_last, device):
    """(compile, channels_last) of the eager-reference configuration make_table compares this case with, or None
    when the case is that configuration itself. The reference is always backend "torch" at the same amp. On a GPU
    the training target compares against the plain eager reference (no compile, NCHW); on the CPU the target
    compares "auto" with "torch" under the same options."""
    options = (False, False) if device.type == "cuda" else (compile_on, channels_last)
    if backend == "torch" and (compile_on, channels_last) == options:
        return None
    return options


def make_step(model, optimizer, x, target, amp, t_out, device):
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            prediction = model(x, future_seq=t_out)  # (B, 1, t_out, H, W)
        loss = F.binary_cross_entropy(prediction.float(), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return step, losses


# How far a configuration's first loss (initial weights, same data) may be from the eager reference's at the same amp,
# relative: float32 runs differ by convolution algorithms (TF32 on a GPU), bf16 ones also by where they round.
LOSS_RTOL = {"none": 1e-3, "bf16": 2e-2}


def run_case(backend, compile_on, channels_last, amp, config, device, args, peaks, reference_losses):
    """One configuration's record. `reference_losses` maps amp to the eager reference's first loss: the reference
    fills it, the others are checked against it (a backend that trains something else must not post a speed)."""
    record = dict(backend=backend, backend_resolved=convlstm.ops.lstm_gates.backends.resolve(backend, device)[0],
                  amp=amp, compile=compile_on, channels_last=channels_last, config=dict(config))
    torch._dynamo.reset()  # each case compiles afresh; its paired reference (below) compiles beside it
    model, optimizer, x, target = build(backend, compile_on, channels_last, config, device, args)
    step, losses = make_step(model, optimizer, x, target, amp, config["t_out"], device)
    warmup = 2
    start = time.perf_counter()
    for _ in range(warmup):  # compiles, autotunes, creates Adam's state
        step()
    benchutil.sync(device)
    record["first_steps_s"] = time.perf_counter() - start
    ms, spread = benchutil.time_ms(step, device, seconds=0.0 if args.quick else 1.5, min_reps=2 if args.quick else 5,
                                   max_reps=30, warmup=0)
    record["peak_mem_mb"] = benchutil.peak_mem_mb(step, device)
    loss = torch.stack(losses).float()
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite loss in the training step: {loss.tolist()}")
    first = loss[0].item()
    if backend == "torch" and not compile_on and not channels_last:
        reference_losses[amp] = first
    elif amp in reference_losses and not abs(first - reference_losses[amp]) <= LOSS_RTOL[amp] * reference_losses[amp]:
        raise AssertionError(f"first-step loss {first:.6f} differs from the eager reference's "
                             f"{reference_losses[amp]:.6f} by more than {LOSS_RTOL[amp]:.0e} relative")
    flops = train_step_flops(model, config["batch"], config["size"], config["t_in"], config["t_out"])
    tflops = flops / (ms * 1e-3) / 1e12
    record.update(status="ok", ms=ms, ms_spread=spread, seq_per_s=config["batch"] / (ms * 1e-3),
                  loss_first=first, loss=loss[-1].item(), flops_per_step=flops, tflops=tflops, mfu=tflops / peaks[amp])
    options = reference_options(backend, compile_on, channels_last, device)
    if options is not None:
        record.update(time_against_reference(step, options, amp, config, device, args))
    return record


def time_against_reference(step, options, amp, config, device, args):
    """The case's step and its eager reference's, timed in one window, alternating (benchutil.time_paired_ms):
    timings of two cases taken minutes apart drift by 10-30% on a shared CPU, which is larger than the differences
    the targets judge. The reference is built afresh from the same seed (same weights and data); the case's model
    is already warm."""
    ref_compile, ref_channels_last = options
    model, optimizer, x, target = build("torch", ref_compile, ref_channels_last, config, device, args)
    ref_step, _ = make_step(model, optimizer, x, target, amp, config["t_out"], device)
    ms, spread, ref_ms, ref_spread = benchutil.time_paired_ms(
        step, ref_step, device, seconds=0.0 if args.quick else 3.0, min_reps=2 if args.quick else 5, max_reps=30,
        warmup=2)  # the reference's first steps compile it (compile on) and create its Adam state
    return dict(reference=dict(backend="torch", compile=ref_compile, channels_last=ref_channels_last),
                ms_paired=ms, ms_spread_paired=spread, reference_ms_paired=ref_ms,
                reference_ms_spread_paired=ref_spread, speedup_vs_reference=ref_ms / ms)


COLUMNS = [("backend", "backend", ""), ("ran", "backend_resolved", ""), ("amp", "amp", ""),
           ("compile", "compile", ""), ("ch_last", "channels_last", ""), ("ms", "ms", ".2f"),
           ("seq/s", "seq_per_s", ".2f"), ("TFLOP/s", "tflops", ".3f"), ("MFU", "mfu", ".1%"),
           ("vs ref", "speedup_vs_reference", ".3f"), ("peak MiB", "peak_mem_mb", ".1f"), ("first s", "first_steps_s", ".1f"), ("status", "status", "")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="See the module docstring for the "
                                     "configurations and the FLOP count.")
    benchutil.add_common_args(parser)
    parser.add_argument("--config", choices=tuple(CONFIGS),
                        help="model and batch size (default: tutorial on cuda, cpu on cpu, quick with --quick)")
    parser.add_argument("--backends", type=benchutil.comma_list(convlstm.ops.lstm_gates.backends.BACKENDS),
                        help="comma-separated subset (default: torch, auto and every fused backend that runs here)")
    parser.add_argument("--amp", type=benchutil.comma_list(AMPS), help="comma-separated subset of none,bf16")
    parser.add_argument("--compile", type=benchutil.comma_list(("off", "on")), help="off, on or off,on (default; --quick: off)")
    parser.add_argument("--channels-last", type=benchutil.comma_list(("off", "on")), help="off, on or off,on (default; --quick: off)")
    parser.add_argument("--compile-scope", choices=("cell", "model"), default="cell",
                        help="torch.compile each ConvLSTMCell (default) or the whole model")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor; the tests use aot_eager)")
    args = parser.parse_args(argv)
    device = benchutil.check_common_args(parser, args)
    backends = benchutil.check_backends(parser, args.backends, backends_for(device), device)
    config_name = args.config or ("quick" if args.quick else "tutorial" if device.type == "cuda" else "cpu")
    config = CONFIGS[config_name]
    amps = args.amp or list(AMPS)
    # --quick: the eager cases only, unless asked; a first compile alone takes ~30 s on 2 cores.
    compiles = args.compile or (["off"] if args.quick else ["off", "on"])
    layouts = args.channels_last or (["off"] if args.quick else ["off", "on"])

    head = benchutil.header("train", device, args)
    head["config_name"] = config_name
    head["compile_scope"] = args.compile_scope
    head["compile_backend"] = args.compile_backend
    size = 512 if args.quick else None
    peaks = {"none": benchutil.matmul_tflops(device, torch.float32, size),
             "bf16": benchutil.matmul_tflops(device, torch.bfloat16, size)}
    head["matmul_tflops"] = {"fp32_tf32": peaks["none"], "bf16": peaks["bf16"]}
    print(f"{head['device_name']}: config {config_name} {config}; matmul peak fp32/tf32 {peaks['none']:.2f}, "
          f"bf16 {peaks['bf16']:.2f} TFLOP/s", flush=True)

    # Cheap cases first, so a time budget cuts the compiled ones; bf16 first, which the GPU target is about; among
    # the compiled ones the fused backends first (compiling the reference is not what the targets judge).
    amps = sorted(amps, key=lambda amp: amp != "bf16")
    grid = [(compile_on, backend, channels_last, amp)
            for compile_on, amp, backend, channels_last in itertools.product(
                [c == "on" for c in compiles], amps, backends, [c == "on" for c in layouts])]
    grid.sort(key=lambda case: (case[0], case[0] and case[1] == "torch"))  # stable: keeps the order above
    budget = benchutil.Budget(args.budget_s)
    results, reference_losses = [], {}
    for compile_on, backend, channels_last, amp in grid:
        case = dict(backend=backend, amp=amp, compile=compile_on, channels_last=channels_last, config=dict(config))
        if budget.spent():
            record = dict(case, status="skipped", reason="time budget")
        else:
            try:
                record = run_case(backend, compile_on, channels_last, amp, config, device, args, peaks,
                                  reference_losses)
            except Exception as error:  # keep the other cases' numbers; the exit code says it failed
                record = dict(case, status="error", error=f"{type(error).__name__}: {error}")
        results.append(record)
        print(benchutil.format_table([record], COLUMNS).split("\n", 2)[-1], flush=True)
        benchutil.write_json(args.out, head, results)
    for record in results:
        if record["status"] == "error":
            print(f"error: {record['backend']} amp={record['amp']} compile={record['compile']} "
                  f"channels_last={record['channels_last']}: {record['error']}", file=sys.stderr)
    return benchutil.finish("", head, results, COLUMNS, args.out)


if __name__ == "__main__":
    sys.exit(main())
