"""OpenSTL's ConvLSTM (--model openstl_convlstm, --preset convlstm_s / convlstm_l): convlstm.openstl's
OpenSTLConvLSTM as a model of the toolkit, with OpenSTL's training step.

Config: num_hidden = [n_hidden_dim] * num_layers, filter_size = kernel_size, patch_size, layer_norm,
reverse_scheduled_sampling, cell_output, pre / aft = n_steps_past / n_steps_ahead and in_shape (n_steps_past, in_chan,
H, W), (H, W) from the frame shape (else image_size square). Its objective (OpenSTL's ConvLSTM_Model step): all
n_in + n_out frames go in as patches (reshape_patch), a mask says per (sequence, step) whether the true frame or the
model's own output is fed (scheduled sampling, or its reverse variant), and the loss is the MSE over every predicted
frame, inputs included (frames 1 .. T-1). The masks of an optimizer step come from its step number alone (and the
rank), so a resumed run draws the same masks as one that never stopped, and ranks draw different ones as OpenSTL's
processes do; eta, the share of true frames, is carried from step to step and saved in the checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.sequence import split_valid
from ..losses import FrameLoss
from ..openstl import (CELL_OUTPUTS, PRESETS, OpenSTLConvLSTM, reserve_schedule_sampling_exp, reshape_patch,
                       schedule_sampling)
from ..ops.lstm_gates.backends import FUSED
from .spec import Field, ModelSpec, unwrap

FIRST_CONV = "cell_list.0.conv_x.0.weight"
CHANNELS = 1  # Moving MNIST's, for OpenSTL's own files, which do not say how p*p*C splits
FRAME = 64  # the frame size an OpenSTL model without layer norm is built for from its weights (any multiple of p runs)
N_IN = N_OUT = 10  # OpenSTL's Moving MNIST lengths, for its own files
SAMPLING_STREAM = 0x5A  # a numpy seed word of its own, so the masks never share a stream with the data

FIELDS = {
    "num_layers": Field(4, "stacked ConvLSTM cells"),
    "patch_size": Field(4, "frames become (H/p, W/p) grids of p*p*C channels (64x64x1 -> 16x16x16 at 4); H and W "
                           "must divide by it"),
    "layer_norm": Field(False, "LayerNorm after each convolution (its weights fix the frame size)"),
    "cell_output": Field("tanh_c", "h = o * tanh(c) (OpenSTL today), or g: h = o * g, OpenSTL v0.2.0's cell behind "
                                   "its published rows (backend torch only)", choices=CELL_OUTPUTS),
    "scheduled_sampling": Field(True, "after the inputs, feed each step the true frame with probability eta, else "
                                      "the model's own output; eta starts at 1 and falls by "
                                      "--sampling_changing_rate per step (OpenSTL's). False: always the model's own "
                                      "output", group="optimisation"),
    "sampling_stop_iter": Field(50000, "the step from which eta is 0", group="optimisation"),
    "sampling_changing_rate": Field(2e-5, "eta's fall per optimizer step", group="optimisation"),
    "reverse_scheduled_sampling": Field(False, "OpenSTL's reverse scheduled sampling (input frames too are replaced "
                                               "by the model's output, less and less often, between "
                                               "--r_sampling_step_1 and _2)", group="optimisation"),
    "r_sampling_step_1": Field(25000, "reverse scheduled sampling: the step its ramps start", group="optimisation"),
    "r_sampling_step_2": Field(50000, "reverse scheduled sampling: the step its ramps end", group="optimisation"),
    "r_exp_alpha": Field(5000.0, "reverse scheduled sampling: the time constant in steps of the input frames' "
                                 "exponential ramp", group="optimisation"),
}


# HKO-7's setting (Shi et al. 2017) on this model: 5 frames (30 minutes) in, 20 (2 hours) out, its Z-R relation and
# balanced MSE; evaluate.py's default thresholds are its 0.5, 2, 5, 10, 30 mm/h. The sizes are ours (HKO-7's own
# ConvLSTM baseline is an encoder-forecaster at 480x480): the Quickstart's 4x4 patches, 3 layers of 64, kernel 5,
# scheduled sampling over by step 5000.
HKO7_PRESET = dict(model="openstl_convlstm", n_steps_past=5, n_steps_ahead=20, zr_a=58.53, zr_b=1.56, loss="bmse",
                   n_hidden_dim=64, num_layers=3, kernel_size=5, patch_size=4, lr=1e-3, lr_schedule="cosine",
                   min_lr=1e-4, batch_size=8, sampling_changing_rate=2e-4)


def preset_values(name: str) -> dict:
    """The train.py flag values of --preset `name`: OpenSTL's configs/mmnist/ConvLSTM(-L).py (convlstm.openstl.PRESETS)
    as this toolkit's fields, image_size Moving MNIST's 64. Every preset's layers have one width. OpenSTL's Adam has
    torch's default betas, hence beta_2 0.999."""
    preset = PRESETS[name]
    return dict(model="openstl_convlstm", n_hidden_dim=preset["num_hidden"][0], num_layers=len(preset["num_hidden"]),
                kernel_size=preset["filter_size"], patch_size=preset["patch_size"],
                layer_norm=bool(preset["layer_norm"]),
                reverse_scheduled_sampling=bool(preset["reverse_scheduled_sampling"]),
                n_steps_past=preset["pre_seq_length"], n_steps_ahead=preset["aft_seq_length"],
                image_size=preset["in_shape"][2], lr=preset["lr"], batch_size=preset["batch_size"],
                epochs=preset["epoch"], lr_schedule=preset["sched"],
                onecycle_final_div=float(preset["final_div_factor"]), beta_2=0.999,
                scheduled_sampling=bool(preset["scheduled_sampling"]),
                sampling_stop_iter=preset["sampling_stop_iter"],
                sampling_changing_rate=preset["sampling_changing_rate"],
                r_sampling_step_1=preset["r_sampling_step_1"], r_sampling_step_2=preset["r_sampling_step_2"],
                r_exp_alpha=float(preset["r_exp_alpha"]))


def check(cfg):
    """The first own value that cannot work, as (flag, rule); None when all can."""
    rules = [
        (cfg.num_layers >= 1, "num_layers", "must be at least 1"),
        (cfg.patch_size >= 1, "patch_size", "must be at least 1"),
        (cfg.data is not None or cfg.patch_size < 1 or cfg.image_size % cfg.patch_size == 0, "patch_size",
         f"must divide --image_size {cfg.image_size}"),
        (cfg.cell_output != "g" or cfg.backend not in FUSED, "cell_output",
         f"g runs on --backend torch or auto only: the {cfg.backend} kernels compute h = o * tanh(c)"),
        (cfg.sampling_stop_iter >= 0, "sampling_stop_iter", "must be >= 0"),
        (math.isfinite(cfg.sampling_changing_rate) and cfg.sampling_changing_rate >= 0, "sampling_changing_rate",
         "must be a finite number >= 0"),
        (0 <= cfg.r_sampling_step_1 <= cfg.r_sampling_step_2, "r_sampling_step_1",
         f"must be in [0, --r_sampling_step_2 {cfg.r_sampling_step_2}]"),
        (math.isfinite(cfg.r_exp_alpha) and cfg.r_exp_alpha > 0, "r_exp_alpha", "must be a positive number"),
    ]
    return next(((flag, rule) for ok, flag, rule in rules if not ok), None)


def build(config, frame_shape, backend):
    height, width = (frame_shape[1:] if frame_shape is not None else [config["image_size"]] * 2)
    patch = config.get("patch_size", FIELDS["patch_size"].default)
    if height % patch or width % patch:
        raise ValueError(f"frames of {height}x{width} do not divide into --patch_size {patch} patches")
    return OpenSTLConvLSTM(
        num_hidden=[config["n_hidden_dim"]] * config.get("num_layers", FIELDS["num_layers"].default),
        in_shape=(config["n_steps_past"], config["in_chan"], int(height), int(width)),
        pre_seq_length=config["n_steps_past"], aft_seq_length=config["n_steps_ahead"],
        filter_size=config["kernel_size"], patch_size=patch, layer_norm=config.get("layer_norm", False),
        reverse_scheduled_sampling=config.get("reverse_scheduled_sampling", False),
        cell_output=config.get("cell_output", "tanh_c"), backend=backend)


def config_of(model):
    """The config keys that rebuild `model`. ValueError for layers that differ in width, which no config names."""
    if len(set(model.num_hidden)) != 1:
        raise ValueError(f"its layers have different widths {model.num_hidden}; a config has one n_hidden_dim")
    cell = model.cell_list[0]
    _, channels, height, width = model.in_shape
    return dict(model="openstl_convlstm", n_hidden_dim=model.num_hidden[0], num_layers=model.num_layers,
                kernel_size=cell.conv_x[0].kernel_size[0], patch_size=model.patch_size,
                layer_norm=len(cell.conv_x) > 1, reverse_scheduled_sampling=model.reverse_scheduled_sampling,
                cell_output=cell.cell_output, in_chan=channels, n_steps_past=model.pre_seq_length,
                n_steps_ahead=model.aft_seq_length, image_size=height)


def input_problem(model, height, width):
    """Frames must divide into the patches, and with layer norm be those the model was built for."""
    p = model.patch_size
    if height % p or width % p:
        return f"frames of {height}x{width} do not divide into the model's {p}x{p} patches"
    built = tuple(model.in_shape[2:])
    if len(model.cell_list[0].conv_x) > 1 and (height, width) != built:
        return f"the model has layer norm over {built[0]}x{built[1]} frames and cannot take {height}x{width}"
    return None


def from_weights(weights, backend, channels=None, cell_output=None):
    """(the OpenSTLConvLSTM an OpenSTL state_dict's shapes describe, the frame size its layer norm fixes, its
    channels), or None: layer k's cell_list.<k>.conv_x.0.weight
    (4 hidden_k, in_k, k, k), in_0 = p*p*channels (convlstm.load's docstring: what the weights cannot say)."""
    if FIRST_CONV not in weights:
        return None
    channels, convs = channels or CHANNELS, []
    while isinstance(weights.get(f"cell_list.{len(convs)}.conv_x.0.weight"), torch.Tensor):
        convs.append(weights[f"cell_list.{len(convs)}.conv_x.0.weight"])
    if not convs or any(w.dim() != 4 or w.shape[0] % 4 for w in convs):
        first = weights.get(FIRST_CONV)
        found = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise ValueError(f"{FIRST_CONV} is not OpenSTL's ConvLSTM's (4 hidden, p*p*C, k, k), found {found}")
    patch_channels = convs[0].shape[1]
    patch_size = math.isqrt(patch_channels // channels) if patch_channels % channels == 0 else 0
    if patch_size < 1 or patch_size * patch_size * channels != patch_channels:
        raise ValueError(f"OpenSTL's ConvLSTM with {patch_channels} patch channels (patch_size^2 x frame channels), "
                         f"which no patch_size makes of {channels}-channel frames: give the frames' channels "
                         "(load_model(channels=...), --openstl_channels)")
    grid = weights.get("cell_list.0.conv_x.1.weight")  # layer norm's (4 hidden, H/p, W/p)
    if isinstance(grid, torch.Tensor) and grid.dim() == 3:
        height, width = (n * patch_size for n in grid.shape[1:])
    else:
        height = width = FRAME if FRAME % patch_size == 0 else patch_size
    try:
        model = OpenSTLConvLSTM([w.shape[0] // 4 for w in convs], in_shape=(N_IN, channels, height, width),
                                pre_seq_length=N_IN, aft_seq_length=N_OUT, filter_size=convs[0].shape[-1],
                                patch_size=patch_size, layer_norm=grid is not None,
                                cell_output=cell_output or "tanh_c", backend=backend)
    except ValueError as error:
        raise ValueError(f"its weights describe no OpenSTL ConvLSTM ({error})") from None
    return model, ((height, width) if grid is not None else None), channels


def forecast(model, x, n_out):
    """OpenSTL's test-time path, predict(x, n_out) (inputs, then its own outputs fed back), unclipped, on the
    unwrapped module (predict is not forward)."""
    return unwrap(model).predict(x, n_out)


class OpenSTLObjective:
    """OpenSTL's ConvLSTM_Model step with its scheduled sampling; eta starts at 1.0 as OpenSTL's."""

    def __init__(self, cfg, frame_shape, rank: int):
        self.cfg, self.rank = cfg, rank
        self.n_in, self.n_out, self.patch = cfg.n_steps_past, cfg.n_steps_ahead, cfg.patch_size
        self.in_shape = (cfg.n_steps_past, *frame_shape)
        self.eta = 1.0
        self.loss = FrameLoss.of(cfg)

    def masks(self, step: int, count: int, device) -> list:
        """The masks of optimizer step `step` (0-based) for its `count` micro-batches: one draw over all their
        sequences, split, so that N micro-batches of b draw as one batch of N*b."""
        cfg, batch = self.cfg, self.cfg.batch_size * count
        rng = np.random.default_rng([cfg.seed, SAMPLING_STREAM, self.rank, step])
        shape = dict(batch_size=batch, in_shape=self.in_shape, patch_size=self.patch, rng=rng, device=device)
        if cfg.reverse_scheduled_sampling:
            mask = reserve_schedule_sampling_exp(step, pre_seq_length=self.n_in, aft_seq_length=self.n_out,
                                                 r_sampling_step_1=cfg.r_sampling_step_1,
                                                 r_sampling_step_2=cfg.r_sampling_step_2,
                                                 r_exp_alpha=cfg.r_exp_alpha, **shape)
        else:
            self.eta, mask = schedule_sampling(self.eta, step, aft_seq_length=self.n_out,
                                               scheduled_sampling=cfg.scheduled_sampling,
                                               sampling_stop_iter=cfg.sampling_stop_iter,
                                               sampling_changing_rate=cfg.sampling_changing_rate, **shape)
        return list(mask.chunk(count))

    def __call__(self, model, batch, mask):
        """batch (B, T, C, H, W) -> OpenSTL's loss: the MSE of frames 1 .. n_in + n_out - 1, each predicted from
        the frames before it (true ones, or the model's own output where the mask is 0); over the valid pixels only
        where the batch has no-data pixels (NaN: 0 in the frames the model reads); --loss bmse / bmae weigh them."""
        batch, valid = split_valid(batch[:, :self.n_in + self.n_out])
        frames = reshape_patch(batch.permute(0, 1, 3, 4, 2), self.patch)  # (B, T, H/p, W/p, p*p*C)
        own = valid is None and self.loss.kind == "mse"  # OpenSTL's own loss, to the last bit
        next_frames, loss = model(frames, mask.to(frames.dtype), return_loss=own)
        if own:
            return loss.float()
        valid = None if valid is None else reshape_patch(valid.permute(0, 1, 3, 4, 2), self.patch)[:, 1:]
        return self.loss(next_frames.float(), frames[:, 1:].float(), valid)

    def logged_eta(self):
        """eta for the log; None under reverse scheduled sampling. OpenSTL's eta keeps falling below 0 when
        sampling_changing_rate * sampling_stop_iter > 1 (a probability of 0 all the same): shown as 0."""
        return None if self.cfg.reverse_scheduled_sampling else max(self.eta, 0.0)

    def state_dict(self) -> dict:
        return {"eta": self.eta}

    def load_state_dict(self, state: dict) -> None:
        self.eta = float(state["eta"])


SPEC = ModelSpec(
    name="openstl_convlstm", model_class=OpenSTLConvLSTM, build=build, forecast=forecast,
    summary="OpenSTL's ConvLSTM (a stack of --num_layers cells on --patch_size patches, teacher forcing with scheduled "
            "sampling, the loss over all predicted frames, inputs included)",
    fields=FIELDS, weight_fields=("n_hidden_dim", "num_layers", "kernel_size", "patch_size", "layer_norm",
                                  "cell_output"),
    config_keys=("n_hidden_dim", "in_chan", "kernel_size", "n_steps_past", "n_steps_ahead"), check=check,
    from_weights=from_weights, config_of=config_of, input_problem=input_problem, objective=OpenSTLObjective,
    presets={**{name: preset_values(name) for name in PRESETS}, "hko7": HKO7_PRESET}, unused_parameters=True,
    load_options=("cell_output",),
    container="openstl")
