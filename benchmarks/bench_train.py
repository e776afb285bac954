"""bench_train: one whole training step (forward, backward, Adam) of each model, per backend and option.

    python benchmarks/bench_train.py --device cuda --out benchmarks/results/train_cuda.json
    python benchmarks/bench_train.py --device cpu --quick --models openstl_convlstm

Models (--models, default both): the tutorial's EncoderDecoderConvLSTM (its step, make_step, in a configuration of
CONFIGS) and OpenSTL's ConvLSTM (OpenSTL's step, make_openstl_step, in OPENSTL_CONFIGS: at "tutorial" the ConvLSTM-S
preset at OpenSTL's batch 16). Configurations: default tutorial on cuda, cpu on cpu (where the tutorial's takes half
a minute). For backends torch (the eager reference), auto unless it is a fused one, the fused ones x compile off/on
(of each cell) x channels_last off/on x amp none/bf16. Reports the median step time and IQR, sequences/s, peak
memory, and the model's FLOPs (count_flops: convolutions, 2 per multiply-add, forward per sequence and forward +
backward per step) with the rate they make. Inference, in OpenSTL's convention, is bench_inference's.
"""
from __future__ import annotations

import functools
import itertools
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import benchutil
import convlstm
from convlstm.memory import peak_mem_mb
from convlstm.model import MODELS, model_from_config, preset_config
from convlstm.openstl import OpenSTLConvLSTMCell, reshape_patch, schedule_sampling
from convlstm.training.memory_format import MemoryFormat

CONFIGS = {"tutorial": dict(batch=12, nf=64, size=64, t_in=10, t_out=10),  # 3.0 TFLOP per step (count_flops)
           "cpu": dict(batch=4, nf=16, size=32, t_in=10, t_out=10),
           "quick": dict(batch=2, nf=8, size=16, t_in=4, t_out=4)}
# OpenSTL's model as train.py's config keys (model_from_config) and the batch; "tutorial" is ConvLSTM-S, 5.4 TFLOP.
OPENSTL_CONFIGS = {
    "tutorial": dict(batch=16, **preset_config("convlstm_s")),
    "cpu": dict(batch=4, model="openstl_convlstm", n_hidden_dim=16, num_layers=4, kernel_size=5, patch_size=4,
                n_steps_past=10, n_steps_ahead=10, image_size=32),
    "quick": dict(batch=2, model="openstl_convlstm", n_hidden_dim=8, num_layers=2, kernel_size=3, patch_size=2,
                  n_steps_past=4, n_steps_ahead=4, image_size=16)}
AMPS = ("none", "bf16")
# First losses may differ by convolution algorithms (TF32 on a GPU) and, under bf16, by where they round.
LOSS_RTOL = {"none": 1e-3, "bf16": 2e-2}


def build(backend, config, device, compile_on=False, channels_last=False, compile_backend="inductor"):
    """Model, Adam and one batch, seeded so every case starts from the same weights and data. channels_last: as
    train.py --channels_last (convlstm.training.memory_format): Conv2d weights and each input frame."""
    torch.manual_seed(0)
    layout = MemoryFormat(channels_last)
    model = layout.model(convlstm.EncoderDecoderConvLSTM(nf=config["nf"], in_chan=1, backend=backend).to(device))
    b, s = config["batch"], config["size"]
    x = layout.batch(torch.rand(b, config["t_in"], 1, s, s, device=device))
    target = torch.rand(b, 1, config["t_out"], s, s, device=device)
    for module in model.modules():
        if compile_on and isinstance(module, convlstm.ConvLSTMCell):  # the whole model would unroll 20 time steps
            module.compile(backend=compile_backend)
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


def build_openstl(backend, config, device, compile_on=False, channels_last=False, compile_backend="inductor"):
    """OpenSTL's model of `config` (OPENSTL_CONFIGS), Adam, one batch of patch frames (B, T_in + T_out, H/p, W/p,
    p*p) and the scheduled-sampling mask of its first iteration, seeded as build's."""
    torch.manual_seed(0)
    model = MemoryFormat(channels_last).model(model_from_config(dict(config, in_chan=1, backend=backend)).to(device))
    b, s, p, t_in, t_out = (config[k] for k in ("batch", "image_size", "patch_size", "n_steps_past", "n_steps_ahead"))
    frames = reshape_patch(torch.rand(b, t_in + t_out, s, s, 1, device=device), p)
    _, mask = schedule_sampling(1.0, 0, b, (t_in, 1, s, s), p, t_out, rng=np.random.default_rng(0), device=device)
    for module in model.modules():  # (channels_last: the model makes its frames and states so, from its weights)
        if compile_on and isinstance(module, OpenSTLConvLSTMCell):
            module.compile(backend=compile_backend)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), frames, mask


def make_openstl_step(model, optimizer, frames, mask, amp, device):
    """OpenSTL's training step (its model's own MSE over frames 1 .., the mask fixed) and the list of its losses."""
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            _, loss = model(frames, mask)
        loss.float().backward()
        optimizer.step()
        losses.append(loss.detach())
    return step, losses


def count_flops(model_name, config):
    """FLOPs of one training step's forward and backward, counted by torch.utils.flop_counter.FlopCounterMode on
    the meta device (shapes only: free, whatever the size), with backend torch and no autocast: convolutions and
    matrix products at 2 FLOPs per multiply-add; gate element-wise math, losses and Adam are not counted. Returns
    gflop_fwd_per_seq (a sequence's forward, in GFLOP; OpenSTL's tables count with fvcore, one per multiply-add:
    half this) and flop_per_step (forward + backward of the batch)."""
    meta = torch.device("meta")
    with FlopCounterMode(display=False) as forward:
        if model_name == "tutorial":
            model, _, x, target = build("torch", config, meta)
            loss = F.binary_cross_entropy(model(x, future_seq=target.shape[2]), target)
        else:
            model, _, frames, mask = build_openstl("torch", config, meta)
            _, loss = model(frames, mask)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return dict(gflop_fwd_per_seq=forward.get_total_flops() / config["batch"] / 1e9,
                flop_per_step=forward.get_total_flops() + backward.get_total_flops())


def measure(model_name, backend, amp, compile_on, channels_last, config, device, args, reference_losses, flops):
    """One case at `config`."""
    torch._dynamo.reset()  # each case compiles afresh
    builder = build if model_name == "tutorial" else build_openstl
    model, optimizer, *data = builder(backend, config, device, compile_on, channels_last, args.compile_backend)
    if model_name == "tutorial":
        step, losses = make_step(model, optimizer, *data, amp, device)
    else:
        step, losses = make_openstl_step(model, optimizer, *data, amp, device)
    for _ in range(2):  # compiles, autotunes, creates Adam's state
        step()
    ms, iqr = benchutil.time_ms(step, device, 0.01 if args.quick else args.seconds)
    peak = peak_mem_mb(step, device)
    loss = torch.stack(losses).float()
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite loss in the training step: {loss.tolist()}")
    first = loss[0].item()  # every case of a model starts from the same weights and data: its first loss is the
    if backend == "torch" and not compile_on and not channels_last:  # reference's
        reference_losses[model_name, amp] = first
    elif (model_name, amp) in reference_losses:
        torch.testing.assert_close(first, reference_losses[model_name, amp], rtol=LOSS_RTOL[amp], atol=0,
                                   msg=lambda diff: f"first loss against the eager reference's: {diff}")
    if model_name not in flops:
        flops[model_name] = count_flops(model_name, config)
    counted = flops[model_name]
    return [dict(backend_resolved=convlstm.ops.lstm_gates.resolve(backend, device)[0], ms=ms, ms_iqr=iqr,
                seq_per_s=config["batch"] / ms * 1e3, peak_mem_mb=peak, loss_first=first, loss=loss[-1].item(),
                **counted, tflop_per_s=counted["flop_per_step"] / ms / 1e9, batch=config["batch"])]


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--config", choices=tuple(CONFIGS), help="model sizes and batch size")
    parser.add_argument("--models", type=benchutil.comma_list(MODELS), help=f"default {','.join(MODELS)}")
    parser.add_argument("--backends", type=benchutil.comma_list(convlstm.ops.lstm_gates.BACKENDS),
                        help="comma-separated (default: torch, auto and every fused backend that runs here)")
    parser.add_argument("--amp", type=benchutil.comma_list(AMPS), help="none, bf16 or none,bf16 (default)")
    parser.add_argument("--compile", type=benchutil.comma_list(("off", "on")), help="default off,on; --quick off")
    parser.add_argument("--channels-last", type=benchutil.comma_list(("off", "on")), help="default off,on; --quick off")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend")
    parser.add_argument("--seconds", type=float, default=1.5, help="time each case for this long (default 1.5)")

    def available(device):
        fused = benchutil.fused_backends(device)
        return ["torch"] + ([] if convlstm.ops.lstm_gates.resolve("auto", device)[0] in fused else ["auto"]) + fused
    args, device = benchutil.parse(parser, argv, available)
    config_name = args.config or ("quick" if args.quick else "tutorial" if device.type == "cuda" else "cpu")
    configs = {"tutorial": CONFIGS[config_name], "openstl_convlstm": OPENSTL_CONFIGS[config_name]}
    models = args.models or list(MODELS)
    head = benchutil.header("train", device, args, config_name=config_name, compile_backend=args.compile_backend)
    for name in models:
        print(f"{head['device_name']}: {name}, config {config_name} {configs[name]}")
    # Eager cases first, both models' (a time box cuts the compiled ones), bf16 first (the GPU target's), the eager
    # reference first at each amp (the others' losses are checked against it), compiled reference last (no target
    # judges it).
    compiles = [c == "on" for c in args.compile or (["off"] if args.quick else ["off", "on"])]
    layouts = [c == "on" for c in args.channels_last or (["off"] if args.quick else ["off", "on"])]
    amps = sorted(args.amp or AMPS, key=lambda amp: amp != "bf16")
    grid = sorted(itertools.product(compiles, models, amps, args.backends, layouts),
                  key=lambda case: (case[0], case[0] and case[3] == "torch"))
    reference_losses, flops = {}, {}
    cases = [([dict(model=name, backend=backend, amp=amp, compile=compile_on, channels_last=channels_last,
                    config=configs[name])],
              functools.partial(measure, name, backend, amp, compile_on, channels_last, configs[name], device, args,
                                reference_losses, flops))
             for compile_on, name, amp, backend, channels_last in grid]
    return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
