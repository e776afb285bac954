"""The per-pixel training loss of both models' objectives: --loss mse|bmse|bmae.

mse is the plain mean squared error on the models' [0, 1] scale. bmse and bmae are HKO-7's balanced losses (Shi et
al. 2017): each pixel's error weighted by the rain-rate band of the true frame there, 1, 1, 2, 5, 10 and 30 for
rates below 0.5, 0.5-2, 2-5, 5-10, 10-30 and from 30 mm/h up, so the rare heavy rain the scores care about is not
averaged away by the dry and light pixels that fill most frames (an MSE model blurs and fades heavy cores). The rate
comes from the checkpoint's transform (convlstm.data.units: dBZ through the Z-R relation), so the balanced losses need
a radar archive in dBZ or mm/h. Every loss is over the valid pixels (the no-data mask) and divides by their count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.units import Units

LOSSES = ("mse", "bmse", "bmae")
HKO7_BANDS = (0.5, 2.0, 5.0, 10.0, 30.0)  # mm/h, the band edges (a rate on an edge is in the band above)
HKO7_WEIGHTS = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)


class LossError(ValueError):
    """A loss that cannot apply to the data; one line naming it."""


def rain_weights(target: torch.Tensor, units: Units) -> torch.Tensor:
    """HKO-7's weight of each pixel of `target` (the [0, 1] scale) by its rain rate in mm/h."""
    rain = units.rain_rate(units.from_unit(target.detach()))
    bands = torch.tensor(HKO7_BANDS, device=target.device)
    weights = torch.tensor(HKO7_WEIGHTS, device=target.device)
    return weights[torch.bucketize(rain.nan_to_num(0.0), bands, right=True)]


class FrameLoss:
    """loss(pred, target, valid=None) -> a float32 scalar: the chosen loss over the valid pixels (all when None)."""

    def __init__(self, kind: str = "mse", units: Units | None = None):
        if kind not in LOSSES:
            raise LossError(f"--loss {kind!r}: expected one of {', '.join(LOSSES)}")
        if kind != "mse" and (units is None or units.kind == "none"):
            raise LossError(f"--loss {kind} weighs pixels by rain rate: it needs a radar archive in dBZ or mm/h "
                            f"(--transform dbz or rainrate), not {'--transform none' if units else 'frames in [0, 1]'}")
        self.kind, self.units = kind, units

    @classmethod
    def of(cls, cfg) -> "FrameLoss":
        """The loss of a train.py config (its --loss; the transform as resolved when the data opened)."""
        values = vars(cfg) if not isinstance(cfg, dict) else cfg
        return cls(values.get("loss", "mse"), Units.from_config(values))

    def __call__(self, pred, target, valid=None):
        if self.kind == "mse" and valid is None:
            return F.mse_loss(pred, target)  # the path data without a mask always took
        error = (pred - target).square() if self.kind != "bmae" else (pred - target).abs()
        if self.kind != "mse":
            error = error * rain_weights(target, self.units)
        if valid is None:
            return error.mean()
        return (error * valid).sum() / valid.sum().clamp_min(1)
