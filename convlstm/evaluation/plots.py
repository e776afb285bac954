"""Figures of an evaluation: metrics against frame index, sample sequences as a grid and as an animated GIF.

matplotlib draws through its Agg canvas directly (no pyplot, no display, no global backend switch); Pillow writes the
GIF. Both are imported here only, so the rest of the package works without them.
"""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .metrics import METRIC_NAMES

METRIC_LABELS = {
    "mse": "MSE per frame (sum over pixels) \u2193",
    "mae": "MAE per frame (sum over pixels) \u2193",
    "psnr": "PSNR (dB) \u2191",
    "ssim": "SSIM (OpenSTL, data_range 2) \u2191",
    "ssim_uint8": "SSIM (PredRNN, uint8) \u2191",
}


def plot_per_frame(curves, first_frame, path):
    """Each metric against the predicted frame's index, one line per curve.

    curves: {label: {"per_frame": {metric: [value per predicted frame]}}} (e.g. the model and the baselines);
    first_frame: index (1-based, in the whole sequence) of the first predicted frame; path: the .png to write.
    """
    fig = Figure(figsize=(4 * len(METRIC_NAMES), 3.8))
    FigureCanvasAgg(fig)
    for ax, name in zip(fig.subplots(1, len(METRIC_NAMES)), METRIC_NAMES):
        for label, result in curves.items():
            values = result["per_frame"][name]
            ax.plot(range(first_frame, first_frame + len(values)), values, marker="o", markersize=3, label=label)
        ax.set_title(METRIC_LABELS[name], fontsize=9)
        ax.set_xlabel("frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # Below the plots, in one row: inside the first plot it hid the last-frame baseline's curve.
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(curves), fontsize=8,
               frameon=False)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.24, top=0.9, wspace=0.25)
    fig.savefig(path, dpi=100)


def plot_samples(inputs, target, pred, path, gap=2):
    """One mosaic per sequence: rows inputs, ground truth, prediction, |error|; one column per frame.

    inputs (K, T_in, C, H, W), target and pred (K, T_out, C, H, W): float arrays on the [0, 1] scale. Drawn as a
    single image (one axes, not one per frame: fast for 10x40 frames); RGB frames in colour, other counts averaged
    to grey.
    """
    k, t_in = inputs.shape[:2]
    t_out = target.shape[1]
    h, w = inputs.shape[-2:]
    cols = max(t_in, t_out)
    clipped = np.clip(pred, 0, 1)
    rows = [("input", inputs, 1), ("truth", target, t_in + 1), ("prediction", clipped, t_in + 1),
            ("|error|", np.abs(clipped - target), t_in + 1)]
    rgb = inputs.shape[2] == 3
    mosaic = np.ones((4 * k * (h + gap) - gap, cols * (w + gap) - gap, *((3,) if rgb else ())),
                     dtype=np.float32)  # white gaps
    labels = []
    for seq in range(k):
        for r, (label, frames, first) in enumerate(rows):
            top = (4 * seq + r) * (h + gap)
            for col in range(frames.shape[1]):
                left = col * (w + gap)
                frame = frames[seq, col]
                mosaic[top:top + h, left:left + w] = frame.transpose(1, 2, 0) if rgb else frame.mean(axis=0)
            labels.append((top + h / 2, f"#{seq} {label} (t={first}..{first + frames.shape[1] - 1})"))
    label_width, pixels_per_inch = 2.0, 40  # inches left of the frames for the row labels; frame scale
    width, height = mosaic.shape[1] / pixels_per_inch, mosaic.shape[0] / pixels_per_inch
    fig = Figure(figsize=(label_width + width + 0.1, height + 0.2))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((label_width / (label_width + width + 0.1), 0.1 / (height + 0.2),
                       width / (label_width + width + 0.1), height / (height + 0.2)))
    ax.imshow(np.clip(mosaic, 0, 1), cmap=None if rgb else "gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([y for y, _ in labels], [text for _, text in labels], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.savefig(path, dpi=100)


def save_gif(inputs, target, pred, path, scale=2, duration_ms=200):
    """Animated GIF: per sequence side by side, ground truth | prediction, over the whole sequence.

    During the input frames both panels show the input; afterwards the right panel shows the prediction. Arrays as
    for plot_samples; frames are upscaled `scale` times (nearest) to be visible.
    """
    truth = np.concatenate([inputs, target], axis=1)  # (K, T, C, H, W)
    shown = np.concatenate([inputs, np.clip(pred, 0, 1)], axis=1)
    k, t, c, h, w = truth.shape
    gap = 2
    frames = []
    for step in range(t):
        canvas = np.ones((k * (h + gap) - gap, 2 * w + gap, c), dtype=np.float32)  # white gaps between panels
        for seq in range(k):
            top = seq * (h + gap)
            canvas[top:top + h, :w] = truth[seq, step].transpose(1, 2, 0)
            canvas[top:top + h, w + gap:] = shown[seq, step].transpose(1, 2, 0)
        image = (np.clip(canvas, 0, 1) * 255).astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
        frames.append(Image.fromarray(image[..., 0] if c == 1 else image))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)


def _to_rgb_uint8(frames):
    """(T, C, H, W) float in [0, 1] -> (T, H, W, 3) uint8."""
    frames = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


# Rain rates drawn in bands (mm/h; HKO-7's thresholds among the edges): white below the first, grey where no data.
RAIN_LEVELS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0)


def _rain_map():
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm
    cmap = colormaps["turbo"].resampled(len(RAIN_LEVELS) - 1).with_extremes(under="white", over="#7a0403",
                                                                              bad="#b0b0b0")
    return cmap, BoundaryNorm(RAIN_LEVELS, cmap.N)


def rain_colours(frames):
    """(T, 1, H, W) rain rates in mm/h, NaN where there is no data -> (T, H, W, 3) uint8 in RAIN_LEVELS' bands."""
    cmap, norm = _rain_map()
    return cmap(norm(np.ma.masked_invalid(frames[:, 0])), bytes=True)[..., :3]


def rain_colour_bar(width):
    """A horizontal colour bar of RAIN_LEVELS, labelled in mm/h, `width` pixels wide: (H, width, 3) uint8."""
    from matplotlib.cm import ScalarMappable
    cmap, norm = _rain_map()
    fig = Figure(figsize=(width / 100, 0.62), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axis = fig.add_axes((0.04, 0.62, 0.92, 0.3))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=axis, orientation="horizontal", extend="both")
    bar.set_ticks(RAIN_LEVELS, labels=[f"{level:g}" for level in RAIN_LEVELS], fontsize=6)
    bar.set_label("rain rate (mm/h); white: dry, grey: no data", fontsize=6, labelpad=1)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_prediction_strip(inputs, predictions, path, gap=2, colours=_to_rgb_uint8, legend=None):
    """One row, white gaps: the inputs (T_in, C, H, W), a gap three times as wide, the predictions (T_out, C, H, W).
    colours: frames -> RGB (grey by default; rain_colours for rain rates); legend(width): an image under the row
    (rain_colour_bar)."""
    frames = np.concatenate([colours(inputs), colours(predictions)])
    total, h, w = frames.shape[:3]
    row = np.full((h, total * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for t, frame in enumerate(frames):
        left = t * (w + gap) + (2 * gap if t >= len(inputs) else 0)
        row[:, left:left + w] = frame
    if legend is not None:
        row = np.concatenate([row, _fit(legend(min(row.shape[1], 800)), row.shape[1])])
    Image.fromarray(row).save(path)


def _fit(image, width):
    """`image` centred on a white band `width` pixels wide."""
    band = np.full((image.shape[0], width, 3), 255, dtype=np.uint8)
    left = (width - image.shape[1]) // 2
    band[:, left:left + image.shape[1]] = image[:, :width]
    return band


GIF_WIDTH = 256  # pixels at least: 32x32 frames made a 64x68 GIF, too small to see


def save_prediction_gif(inputs, predictions, path, duration_ms=200, colours=_to_rgb_uint8, legend=None):
    """The inputs then the predictions, enlarged (nearest) to GIF_WIDTH pixels or more. The bar below grows each
    frame, grey then red: it marks the predictions and keeps GIF frames distinct (Pillow merges identical ones: a
    still prediction). colours and legend as save_prediction_strip's."""
    frames = np.concatenate([colours(inputs), colours(predictions)])
    total, h, w = frames.shape[:3]
    scale = max(2, -(-total // w), -(-GIF_WIDTH // w))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    below = [] if legend is None else [legend(w * scale)]
    images = []
    for t, frame in enumerate(frames):
        bar = np.zeros((4, w * scale, 3), dtype=np.uint8)
        bar[:, :(t + 1) * w * scale // total] = (160, 160, 160) if t < len(inputs) else (220, 40, 40)
        images.append(Image.fromarray(np.concatenate([frame, bar, *below])))
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
