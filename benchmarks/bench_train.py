"""bench_train: one whole training step (forward, backward, Adam) of EncoderDecoderConvLSTM, per backend and option.

    python benchmarks/bench_train.py --device cuda --out benchmarks/results/train_cuda.json
    python benchmarks/bench_train.py --device cpu --quick

The tutorial's step (make_step) in a configuration of CONFIGS (default tutorial on cuda, cpu on cpu, where the
tutorial's takes half a minute) for backends torch (the eager reference), auto unless it is a fused one, the fused
ones x compile off/on (of each ConvLSTMCell) x channels_last off/on x amp none/bf16. Reports the median step time and
IQR, sequences/s and peak memory.
"""
from __future__ import annotations

import functools
import itertools
import sys

import torch
import torch.nn.functional as F
from torch import nn

import benchutil
import convlstm
from convlstm.memory import peak_mem_mb

CONFIGS = {"tutorial": dict(batch=12, nf=64, size=64, t_in=10, t_out=10),  # about 3.5 TFLOP per step
           "cpu": dict(batch=4, nf=16, size=32, t_in=10, t_out=10),
           "quick": dict(batch=2, nf=8, size=16, t_in=4, t_out=4)}
AMPS = ("none", "bf16")
# First losses may differ by convolution algorithms (TF32 on a GPU) and, under bf16, by where they round.
LOSS_RTOL = {"none": 1e-3, "bf16": 2e-2}


def build(backend, config, device, compile_on=False, channels_last=False, compile_backend="inductor"):
    """Model, Adam and one batch, seeded so every case starts from the same weights and data."""
    torch.manual_seed(0)
    model = convlstm.EncoderDecoderConvLSTM(nf=config["nf"], in_chan=1, backend=backend).to(device)
    b, s = config["batch"], config["size"]
    x = torch.rand(b, config["t_in"], 1, s, s, device=device)
    target = torch.rand(b, 1, config["t_out"], s, s, device=device)
    for module in model.modules():
        if channels_last and isinstance(module, nn.Conv2d):  # the Conv3d head has no 4-D layout
            module.to(memory_format=torch.channels_last)
        if compile_on and isinstance(module, convlstm.ConvLSTMCell):  # the whole model would unroll 20 time steps
            module.compile(backend=compile_backend)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), x, target


def make_step(model, optimizer, x, target, amp, device):
    """The tutorial's training step, and the list it appends each loss to. The loss is taken in float32 outside
    autocast (which refuses binary_cross_entropy); no GradScaler, which only fp16 needs."""
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            prediction = model(x, future_seq=target.shape[2])  # (B, 1, t_out, H, W)
        loss = F.binary_cross_entropy(prediction.float(), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return step, losses


def measure(backend, amp, compile_on, channels_last, config, device, args, reference_losses):
    torch._dynamo.reset()  # each case compiles afresh
    model, optimizer, x, target = build(backend, config, device, compile_on, channels_last, args.compile_backend)
    step, losses = make_step(model, optimizer, x, target, amp, device)
    for _ in range(2):  # compiles, autotunes, creates Adam's state
        step()
    ms, iqr = benchutil.time_ms(step, device, 0.01 if args.quick else 1.5)
    peak = peak_mem_mb(step, device)
    loss = torch.stack(losses).float()
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite loss in the training step: {loss.tolist()}")
    first = loss[0].item()  # every case starts from the same weights and data: its first loss is the reference's
    if backend == "torch" and not compile_on and not channels_last:
        reference_losses[amp] = first
    elif amp in reference_losses:
        torch.testing.assert_close(first, reference_losses[amp], rtol=LOSS_RTOL[amp], atol=0,
                                   msg=lambda diff: f"first loss against the eager reference's: {diff}")
    return [dict(backend_resolved=convlstm.ops.lstm_gates.resolve(backend, device)[0], ms=ms, ms_iqr=iqr,
                seq_per_s=config["batch"] / ms * 1e3, peak_mem_mb=peak, loss_first=first, loss=loss[-1].item())]


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--config", choices=tuple(CONFIGS), help="model and batch size")
    parser.add_argument("--backends", type=benchutil.comma_list(convlstm.ops.lstm_gates.BACKENDS),
                        help="comma-separated (default: torch, auto and every fused backend that runs here)")
    parser.add_argument("--amp", type=benchutil.comma_list(AMPS), help="none, bf16 or none,bf16 (default)")
    parser.add_argument("--compile", type=benchutil.comma_list(("off", "on")), help="default off,on; --quick off")
    parser.add_argument("--channels-last", type=benchutil.comma_list(("off", "on")), help="default off,on; --quick off")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend")

    def available(device):
        fused = benchutil.fused_backends(device)
        return ["torch"] + ([] if convlstm.ops.lstm_gates.resolve("auto", device)[0] in fused else ["auto"]) + fused
    args, device = benchutil.parse(parser, argv, available)
    config_name = args.config or ("quick" if args.quick else "tutorial" if device.type == "cuda" else "cpu")
    config = CONFIGS[config_name]
    head = benchutil.header("train", device, args, config_name=config_name, compile_backend=args.compile_backend)
    print(f"{head['device_name']}: config {config_name} {config}")
    # Eager cases first (a time box cuts the compiled ones), bf16 first (the GPU target's), the eager reference
    # first at each amp (the others' losses are checked against it), compiled reference last (no target judges it).
    compiles = [c == "on" for c in args.compile or (["off"] if args.quick else ["off", "on"])]
    layouts = [c == "on" for c in args.channels_last or (["off"] if args.quick else ["off", "on"])]
    amps = sorted(args.amp or AMPS, key=lambda amp: amp != "bf16")
    grid = sorted(itertools.product(compiles, amps, args.backends, layouts),
                  key=lambda case: (case[0], case[0] and case[2] == "torch"))
    reference_losses = {}
    cases = [([dict(backend=backend, amp=amp, compile=compile_on, channels_last=channels_last, config=config)],
              functools.partial(measure, backend, amp, compile_on, channels_last, config, device, args,
                                reference_losses)) for compile_on, amp, backend, channels_last in grid]
    return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
