"""Precipitation nowcasting verification: contingency scores per rain threshold and the fractions skill score.

Forecasts and observations are rain rates in mm/h of shape (B, T, H, W) or (B, T, 1, H, W), T the lead times, on any
device; an optional bool mask `valid` of the same shape marks the pixels with data (False: no data, excluded from every
count and sum). Conventions, those of HKO-7 (Shi et al. 2017) unless said otherwise:
- An event at a threshold is a rate >= the threshold. NaN compares False, so a NaN pixel counts as "no rain": mark it
  invalid to exclude it.
- Scores come from counts (and FSS sums) summed over all frames and sequences, not from per-frame scores averaged:
  a frame without rain then weighs nothing instead of making the mean undefined. Counts are int64 and FSS sums float64,
  both on the CPU, so they add up exactly across batches (and can be all-reduced across ranks).
- A score whose denominator is 0 is undefined and returned as NaN (None in `NowcastScores.result()`); `scores` says
  when each score is undefined.
- CSI-M (Earthformer's name) is the mean CSI over the thresholds whose CSI is defined.
- FSS (Roberts and Lean 2008) at square windows of odd size centred on each pixel; the window is cut by the frame
  edges and by no-data pixels: the event fraction is events / valid pixels within the window.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_THRESHOLDS = (0.5, 2.0, 5.0, 10.0, 30.0)  # mm/h, HKO-7's
DEFAULT_WINDOWS = (1, 5, 9)  # FSS window sides in pixels
COUNT_NAMES = ("hits", "misses", "false_alarms", "correct_negatives")  # order of the last axis of the counts
SCORE_NAMES = ("csi", "pod", "far", "bias", "hss", "ets")


def _fields(forecast, observed, valid):
    """Check shapes and drop the channel axis: -> forecast, observed (B, T, H, W), valid (B, T, H, W) bool."""
    if forecast.shape != observed.shape:
        raise ValueError(f"forecast and observed shapes differ: {tuple(forecast.shape)} vs {tuple(observed.shape)}")
    if not (forecast.dim() == 4 or (forecast.dim() == 5 and forecast.shape[2] == 1)):
        raise ValueError(f"fields must be (B, T, H, W) or (B, T, 1, H, W), got {tuple(forecast.shape)}")
    if valid is None:
        valid = torch.ones(forecast.shape, dtype=torch.bool, device=forecast.device)
    elif valid.dtype != torch.bool or valid.shape != forecast.shape:
        raise ValueError(f"valid must be a bool tensor shaped like the fields, got {valid.dtype} "
                         f"{tuple(valid.shape)}")
    if forecast.dim() == 5:
        forecast, observed, valid = forecast[:, :, 0], observed[:, :, 0], valid[:, :, 0]
    return forecast, observed, valid.to(forecast.device)


def contingency(forecast, observed, thresholds=DEFAULT_THRESHOLDS, valid=None):
    """Contingency counts per lead time and threshold, summed over the batch and the valid pixels.

    forecast, observed: rain rates (mm/h), (B, T, H, W) or (B, T, 1, H, W), any float dtype and device; thresholds: K
    floats (event: value >= threshold); valid: bool, same shape, False = no data (None: all valid).
    Returns int64 counts on the CPU, (T, K, 4) in COUNT_NAMES order: hits, misses, false alarms, correct negatives.
    Counts of several batches add up.
    """
    forecast, observed, valid = _fields(forecast, observed, valid)
    per_threshold = []
    for threshold in thresholds:
        forecast_event, observed_event = forecast >= threshold, observed >= threshold
        hits = forecast_event & observed_event & valid
        misses = ~forecast_event & observed_event & valid
        false_alarms = forecast_event & ~observed_event & valid
        negatives = ~forecast_event & ~observed_event & valid
        per_threshold.append(torch.stack([x.sum(dim=(0, 2, 3)) for x in (hits, misses, false_alarms, negatives)],
                                         dim=-1))  # (T, 4)
    return torch.stack(per_threshold, dim=1).to(device="cpu", dtype=torch.int64)


def _ratio(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0 (an undefined score, not 0 nor infinity)."""
    return torch.where(denominator != 0, numerator / denominator, torch.full_like(numerator, math.nan))


def scores(counts):
    """Categorical scores from contingency counts (..., 4) in COUNT_NAMES order -> {name: float64 tensor (...)}.

    With a hits, b false alarms, c misses, d correct negatives, n = a + b + c + d:
      csi  = a / (a + b + c)                        NaN when no event is observed nor forecast
      pod  = a / (a + c)                            NaN when no event is observed
      far  = b / (a + b)                            NaN when no event is forecast
      bias = (a + b) / (a + c)                      NaN when no event is observed (even if some are forecast)
      hss  = 2(ad - bc) / ((a+c)(c+d) + (a+b)(b+d)) NaN when no event is observed nor forecast, or when every pixel
                                                    is an event in both (b = c = d = 0)
      ets  = (a - a_r) / (a + b + c - a_r), a_r = (a + b)(a + c) / n: NaN in the same cases as hss
    So a perfect forecast scores csi = pod = bias = hss = ets = 1 and far = 0; all misses score csi = pod = bias =
    hss = ets = 0 with far NaN.
    """
    counts = torch.as_tensor(counts).to(torch.float64)
    hits, misses, false_alarms, negatives = counts.unbind(dim=-1)
    a, b, c, d = hits, false_alarms, misses, negatives
    n = a + b + c + d
    a_random = _ratio((a + b) * (a + c), n)  # hits expected by chance with the same event frequencies
    return {
        "csi": _ratio(a, a + b + c),
        "pod": _ratio(a, a + c),
        "far": _ratio(b, a + b),
        "bias": _ratio(a + b, a + c),
        "hss": _ratio(2 * (a * d - b * c), (a + c) * (c + d) + (a + b) * (b + d)),
        "ets": _ratio(a - a_random, a + b + c - a_random),
    }


def _window_sum(field, window):
    """Sum over the window x window square centred on each pixel, zero outside the frame: (N, 1, H, W) float32."""
    return F.avg_pool2d(field, window, stride=1, padding=window // 2, divisor_override=1)


def fss_sums(forecast, observed, thresholds=DEFAULT_THRESHOLDS, windows=DEFAULT_WINDOWS, valid=None):
    """The two sums of the fractions skill score per lead time, threshold and window, over the batch and valid pixels.

    Fields and valid as for `contingency`; windows: odd window sides in pixels. At each valid pixel the event
    fractions Pf, Po are the events among the valid pixels of the window centred there. Returns float64 on the CPU,
    (T, K, len(windows), 2): [..., 0] = sum (Pf - Po)^2, [..., 1] = sum Pf^2 + sum Po^2. Sums of several batches add
    up; `fss` turns them into scores.
    """
    if any(w < 1 or w % 2 == 0 for w in windows):
        raise ValueError(f"FSS windows must be odd positive sizes (centred on a pixel), got {tuple(windows)}")
    forecast, observed, valid = _fields(forecast, observed, valid)
    b, t, h, w = forecast.shape
    flat = (b * t, 1, h, w)
    # Window sums of 0/1 fields are small integers, exact in float32; the fractions and their squares stay float32
    # (half the memory traffic of float64: 32 sequences of 20 64x64 frames took 1.9 s in float64) and are summed in
    # float64.
    valid_field = valid.reshape(flat).float()
    sums = torch.zeros(t, len(thresholds), len(windows), 2, dtype=torch.float64)
    for j, window in enumerate(windows):
        # >= 1 at a valid pixel (itself); a masked pixel may see none: clamped to avoid 0/0, its value is dropped.
        valid_count = _window_sum(valid_field, window).clamp_min(1)
        for k, threshold in enumerate(thresholds):
            fractions = [_window_sum(((x >= threshold) & valid).reshape(flat).float(), window) / valid_count
                         for x in (forecast, observed)]
            forecast_fraction, observed_fraction = (torch.where(valid.reshape(flat), p, 0.0) for p in fractions)
            per_lead = [x.reshape(b, t, h, w).sum(dim=(0, 2, 3), dtype=torch.float64) for x in (
                (forecast_fraction - observed_fraction).square(),
                forecast_fraction.square() + observed_fraction.square())]
            sums[:, k, j] = torch.stack(per_lead, dim=-1).cpu()
    return sums


def fss(sums):
    """FSS = 1 - sum (Pf - Po)^2 / (sum Pf^2 + sum Po^2) from `fss_sums` output (..., 2) -> float64 (...).

    NaN when no event is forecast nor observed (denominator 0). 1 for identical event fields, 0 when the forecast and
    observed events never share a window.
    """
    sums = torch.as_tensor(sums).to(torch.float64)
    return 1 - _ratio(sums[..., 0], sums[..., 1])


def _plain(values):
    """A tensor (or nested lists) as nested lists of Python numbers, NaN -> None (strict JSON has no NaN)."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, list):
        return [_plain(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


class NowcastScores:
    """Accumulates contingency counts and FSS sums over batches; `result()` scores them.

    update(forecast, observed, valid=None) takes fields as `contingency` does, any number of times; the lead count T
    is fixed by the first call. `counts` (T, K, 4) int64 and `fss_sums` (T, K, W, 2) float64 are CPU tensors that can
    be all-reduced across ranks before `result()`.
    """

    def __init__(self, thresholds=DEFAULT_THRESHOLDS, windows=DEFAULT_WINDOWS):
        self.thresholds = tuple(float(x) for x in thresholds)
        self.windows = tuple(int(w) for w in windows)
        self.counts = None
        self.fss_sums = None

    def update(self, forecast, observed, valid=None):
        counts = contingency(forecast, observed, self.thresholds, valid)
        sums = fss_sums(forecast, observed, self.thresholds, self.windows, valid)
        if self.counts is None:
            self.counts, self.fss_sums = counts, sums
        elif counts.shape != self.counts.shape:
            raise ValueError(f"this batch has {counts.shape[0]} lead times, earlier ones {self.counts.shape[0]}")
        else:
            self.counts += counts
            self.fss_sums += sums

    def all_reduce(self, leads, device):
        """Sum counts and FSS sums over the default process group (a no-op without one), on `device` (NCCL's are
        CUDA tensors). A rank that scored nothing adds zeros for `leads` lead times."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.counts is None:
            self.counts = torch.zeros(leads, len(self.thresholds), len(COUNT_NAMES), dtype=torch.int64)
            self.fss_sums = torch.zeros(leads, len(self.thresholds), len(self.windows), 2, dtype=torch.float64)
        for tensor in (self.counts, self.fss_sums):
            summed = tensor.to(device)
            dist.all_reduce(summed)
            tensor.copy_(summed.cpu())

    def result(self):
        """Scores as a JSON-friendly dict (lists, ints, floats; None for an undefined score). T leads, K thresholds,
        W windows:

        {"thresholds": [K], "windows": [W], "count_names": COUNT_NAMES,
         "by_lead":   {"csi", "pod", "far", "bias", "hss", "ets": [T][K], "fss": [T][K][W]},
         "all_leads": {same names: [K], "fss": [K][W]}   (counts and sums summed over the lead times first),
         "csi_m":     {"by_lead": [T], "all_leads": float}   (mean CSI over the thresholds where it is defined),
         "counts": [T][K][4] ints, "fss_sums": [T][K][W][2]}
        """
        if self.counts is None:
            raise RuntimeError("NowcastScores.result() before any update()")
        by_lead = {**scores(self.counts), "fss": fss(self.fss_sums)}
        all_leads = {**scores(self.counts.sum(dim=0)), "fss": fss(self.fss_sums.sum(dim=0))}
        return {
            "thresholds": list(self.thresholds),
            "windows": list(self.windows),
            "count_names": list(COUNT_NAMES),
            "by_lead": {name: _plain(value) for name, value in by_lead.items()},
            "all_leads": {name: _plain(value) for name, value in all_leads.items()},
            "csi_m": {"by_lead": _plain(torch.nanmean(by_lead["csi"], dim=-1)),
                      "all_leads": _plain(torch.nanmean(all_leads["csi"], dim=-1))},
            "counts": self.counts.tolist(),
            "fss_sums": self.fss_sums.tolist(),
        }


def plot_csi_by_lead(results, path, lead_minutes=None):
    """CSI against lead time, one panel per threshold, one line per label; written to `path` as a PNG.

    results: {label: NowcastScores.result()} (e.g. the model and persistence), all with the same thresholds;
    lead_minutes: minutes between lead times, for an x axis in minutes (None: lead index 1..T).
    """
    # Imported here: the scores work without matplotlib. The Agg canvas draws without pyplot or a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    thresholds = next(iter(results.values()))["thresholds"]
    if any(result["thresholds"] != thresholds for result in results.values()):
        raise ValueError("all results must have the same thresholds to share panels")
    fig = Figure(figsize=(3.2 * len(thresholds), 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(thresholds), squeeze=False)[0]
    for k, (ax, threshold) in enumerate(zip(axes, thresholds)):
        for label, result in results.items():
            csi = [math.nan if per_lead[k] is None else per_lead[k] for per_lead in result["by_lead"]["csi"]]
            leads = range(1, len(csi) + 1)
            ax.plot([i * lead_minutes for i in leads] if lead_minutes else leads, csi, marker="o", markersize=3,
                    label=label)
        ax.set_title(f"CSI >= {threshold:g} mm/h", fontsize=9)
        ax.set_xlabel("lead time (min)" if lead_minutes else "lead time (steps)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    # Below the panels, as in plots.plot_per_frame: inside a panel the legend hides curves.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(results), fontsize=8,
               frameon=False)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.25, top=0.9, wspace=0.25)
    fig.savefig(path, dpi=100)
