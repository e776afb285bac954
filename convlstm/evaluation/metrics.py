"""Video-prediction metrics in the conventions of the published Moving MNIST tables, batched in pure torch.

Every function takes predictions and targets of shape (B, T, C, H, W) on the [0, 1] scale (any float dtype, any
device) and returns per-sequence, per-frame values of shape (B, T), so that callers can sum them over sequences and
all-reduce sums and counts (see `MetricTotals`). The math runs in float32, or float64 for float64 inputs.

Conventions (OpenSTL's `openstl/core/metrics.py`, whose tables most recent papers copy; PredRNN for `ssim_uint8`):
- mse, mae: per frame the *sum* over C*H*W pixels of the squared / absolute error, on the raw predictions
  (not clipped). Averaged over frames and sequences this is OpenSTL's `np.mean((pred-true)**2, axis=(0, 1)).sum()`.
- psnr: per frame 10*log10(1 / mean squared error) with predictions clipped to [0, 1] (data range 1), then averaged.
  A frame predicted exactly (mse 0) scores 100 dB instead of infinity (mse floored at 1e-10), so means stay finite.
- ssim: scikit-image's `structural_similarity` as OpenSTL calls it, without `data_range`, on float frames in [0, 1]
  with predictions clipped: uniform 7x7 window, sample covariance (N/(N-1), N=49), K1=0.01, K2=0.03, the mean over
  the "valid" window positions (a 3-pixel border dropped), per channel then averaged, and data_range 2, which is what
  scikit-image < 0.20 assumed for floats (dtype range [-1, 1]); scikit-image >= 0.20 refuses floats without
  data_range, so the published numbers are data_range 2. It reads higher than SSIM with data_range 1.
- ssim_uint8: the PredRNN papers' SSIM: both frames converted to uint8 as `np.uint8(x * 255)` (truncation; the
  prediction clipped to [0, 1] first), then the same SSIM with data_range 255 (scikit-image's default for uint8).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

METRIC_NAMES = ("mse", "mae", "psnr", "ssim", "ssim_uint8")

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
OPENSTL_SSIM_DATA_RANGE = 2.0  # scikit-image < 0.20's range for float images, which OpenSTL's call relied on
PSNR_MSE_FLOOR = 1e-10  # caps PSNR at 100 dB for a frame predicted exactly

CONVENTIONS = {
    "mse": "per frame the sum over C*H*W pixels of (pred - target)^2 on the [0,1] scale, raw predictions; "
           "averaged over frames and sequences (OpenSTL MSE)",
    "mae": "per frame the sum over C*H*W pixels of |pred - target| on the [0,1] scale, raw predictions; "
           "averaged over frames and sequences (OpenSTL MAE)",
    "psnr": "per frame 10*log10(1/mean((clip(pred,0,1) - target)^2)), averaged over frames and sequences; "
            "mse floored at 1e-10 (100 dB) (OpenSTL PSNR)",
    "ssim": "SSIM of clip(pred,0,1) vs target as floats, uniform 7x7 window, sample covariance, K1=0.01, K2=0.03, "
            "data_range 2 (scikit-image < 0.20's default for floats, as OpenSTL calls it), mean over valid window "
            "positions and channels, averaged over frames and sequences (OpenSTL SSIM)",
    "ssim_uint8": "SSIM of uint8(clip(pred,0,1)*255) vs uint8(target*255) (truncation), same window, data_range "
                  "255, averaged over frames and sequences (PredRNN papers' SSIM)",
}


def _check_pair(pred, target):
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"pred and target must both have shape (B, T, C, H, W), got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return pred.to(dtype), target.to(dtype)


def mse_per_frame(pred, target):
    """Sum over (C, H, W) of the squared error, raw predictions: (B, T, C, H, W) x2 -> (B, T)."""
    pred, target = _check_pair(pred, target)
    return (pred - target).square().sum(dim=(2, 3, 4))


def mae_per_frame(pred, target):
    """Sum over (C, H, W) of the absolute error, raw predictions: (B, T, C, H, W) x2 -> (B, T)."""
    pred, target = _check_pair(pred, target)
    return (pred - target).abs().sum(dim=(2, 3, 4))


def psnr_per_frame(pred, target):
    """PSNR in dB with data range 1 of predictions clipped to [0, 1]: (B, T, C, H, W) x2 -> (B, T)."""
    pred, target = _check_pair(pred, target)
    mse = (pred.clamp(0, 1) - target).square().mean(dim=(2, 3, 4))
    return -10 * torch.log10(mse.clamp_min(PSNR_MSE_FLOOR))


def ssim_frames(x, y, data_range):
    """Mean SSIM per frame with scikit-image's defaults: (N, C, H, W) x2 -> (N,).

    Uniform 7x7 window, sample covariance, mean over the window positions that lie wholly inside the frame (what
    scikit-image keeps after cropping its border) and over channels. Frames must be at least 7x7.
    """
    if x.shape[-1] < SSIM_WINDOW or x.shape[-2] < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    c = x.shape[1]
    # One pooling call for all five local moments: (N, 5C, H', W') with H' = H - 6, W' = W - 6.
    moments = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), SSIM_WINDOW, stride=1)
    ux, uy, uxx, uyy, uxy = moments.split(c, dim=1)
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _ssim_per_frame(pred, target, data_range):
    b, t = pred.shape[:2]
    return ssim_frames(pred.flatten(0, 1), target.flatten(0, 1), data_range).view(b, t)


def ssim_per_frame(pred, target):
    """OpenSTL's SSIM (data_range 2, predictions clipped to [0, 1]): (B, T, C, H, W) x2 -> (B, T)."""
    pred, target = _check_pair(pred, target)
    return _ssim_per_frame(pred.clamp(0, 1), target, OPENSTL_SSIM_DATA_RANGE)


def to_uint8_levels(x):
    """`np.uint8(x * 255)` for x in [0, 1] (clipped first), kept as floats: same shape, values 0..255."""
    return torch.floor(x.clamp(0, 1) * 255)


def ssim_uint8_per_frame(pred, target):
    """PredRNN's SSIM on frames truncated to uint8, data_range 255: (B, T, C, H, W) x2 -> (B, T)."""
    pred, target = _check_pair(pred, target)
    # SSIM(a*s, b*s, range*s) == SSIM(a, b, range): compute on levels/255 with range 1, which keeps float32
    # variances (E[x^2] - E[x]^2) away from the cancellation that values up to 255 would cause.
    return _ssim_per_frame(to_uint8_levels(pred) / 255, to_uint8_levels(target) / 255, 1.0)


def frame_metrics(pred, target):
    """All metrics per sequence and frame: (B, T, C, H, W) x2 -> {name: (B, T)} for every name in METRIC_NAMES."""
    return {"mse": mse_per_frame(pred, target), "mae": mae_per_frame(pred, target),
            "psnr": psnr_per_frame(pred, target), "ssim": ssim_per_frame(pred, target),
            "ssim_uint8": ssim_uint8_per_frame(pred, target)}


class MetricTotals:
    """Per-frame sums over sequences, and the number of sequences, for every metric in METRIC_NAMES.

    `add` a batch's `frame_metrics`, `all_reduce` once across ranks (each rank adds only its own sequences, so
    every sequence counts once), then `summary` gives the means. Sums are float64 on `device`.
    """

    def __init__(self, n_frames, device="cpu"):
        self.sums = torch.zeros(len(METRIC_NAMES), n_frames, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, values):
        """values: {name: (B, T)} as returned by frame_metrics."""
        stacked = torch.stack([values[name].to(torch.float64) for name in METRIC_NAMES])  # (M, B, T)
        self.sums += stacked.sum(dim=1).to(self.sums.device)
        self.count += stacked.shape[1]

    def all_reduce(self):
        """Sum totals over the default process group (a no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            packed = torch.cat([self.sums.flatten(), self.count.view(1)])
            dist.all_reduce(packed)
            self.sums.copy_(packed[:-1].view_as(self.sums))
            self.count.copy_(packed[-1])

    def summary(self):
        """{"num_sequences", each metric's overall mean, "per_frame": {name: [mean per frame]}} as Python floats."""
        count = int(self.count.item())
        if count == 0:
            raise ValueError("no sequences were added")
        per_frame = (self.sums / self.count).cpu()
        result = {"num_sequences": count}
        result.update({name: per_frame[i].mean().item() for i, name in enumerate(METRIC_NAMES)})
        result["per_frame"] = {name: per_frame[i].tolist() for i, name in enumerate(METRIC_NAMES)}
        return result
