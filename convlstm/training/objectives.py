"""What one training micro-batch computes for each model: the loss train.py minimises.

- tutorial: the inputs x = frames [0, n_in), y_hat = model(x, future_seq=n_out), the MSE against the next n_out
  frames (the tutorial's loss).
- openstl_convlstm: OpenSTL's ConvLSTM_Model training step. All n_in + n_out frames go in as patches
  (reshape_patch), a mask says per (sequence, step) whether the true frame or the model's own output is fed
  (scheduled sampling, or its reverse variant), and the loss is the MSE over every predicted frame, inputs
  included (frames 1 .. T-1), as OpenSTL's.

Chosen once per run (make_objective); the masks of an optimizer step come from its step number alone (and the rank),
so a resumed run draws the same masks as one that never stopped, and ranks draw different ones as OpenSTL's
processes do. eta, the share of true frames, is carried from step to step and saved in the checkpoint.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from ..data import split_sequence
from ..model import to_btchw
from ..openstl import reserve_schedule_sampling_exp, reshape_patch, schedule_sampling

SAMPLING_STREAM = 0x5A  # a numpy seed word of its own, so the masks never share a stream with the data


class TutorialObjective:
    """The tutorial's seq-to-seq step: no masks, no state."""

    def __init__(self, cfg):
        self.n_in, self.n_out = cfg.n_steps_past, cfg.n_steps_ahead

    def masks(self, step: int, count: int, device) -> list:
        return [None] * count

    def __call__(self, model, batch, mask):
        """batch (B, T, C, H, W) -> the MSE of the next n_out frames predicted from the first n_in."""
        x, y = split_sequence(batch, n_in=self.n_in, n_out=self.n_out)
        return F.mse_loss(to_btchw(model(x, future_seq=self.n_out)).float(), y)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OpenSTLObjective:
    """OpenSTL's ConvLSTM_Model step with its scheduled sampling; eta starts at 1.0 as OpenSTL's."""

    def __init__(self, cfg, frame_shape, rank: int):
        self.cfg, self.rank = cfg, rank
        self.n_in, self.n_out, self.patch = cfg.n_steps_past, cfg.n_steps_ahead, cfg.patch_size
        self.in_shape = (cfg.n_steps_past, *frame_shape)
        self.eta = 1.0

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
        the frames before it (true ones, or the model's own output where the mask is 0)."""
        frames = reshape_patch(batch[:, :self.n_in + self.n_out].permute(0, 1, 3, 4, 2), self.patch)
        _, loss = model(frames, mask.to(frames.dtype))  # frames (B, T, H/p, W/p, p*p*C)
        return loss.float()

    def state_dict(self) -> dict:
        return {"eta": self.eta}

    def load_state_dict(self, state: dict) -> None:
        self.eta = float(state["eta"])


def make_objective(cfg, frame_shape, rank: int):
    """The objective of cfg.model; frame_shape (C, H, W)."""
    if cfg.model == "openstl_convlstm":
        return OpenSTLObjective(cfg, frame_shape, rank)
    return TutorialObjective(cfg)


def sampling_eta(objective) -> float | None:
    """The probability of feeding a true frame in training (OpenSTL's eta), for the log; None for the tutorial's
    model and reverse scheduled sampling. OpenSTL's eta keeps falling below 0 when sampling_changing_rate *
    sampling_stop_iter > 1 (a probability of 0 all the same): shown as 0."""
    if not isinstance(objective, OpenSTLObjective) or objective.cfg.reverse_scheduled_sampling:
        return None
    return max(objective.eta, 0.0)
