"""convlstm.evaluation.metrics against scikit-image, frame by frame, in the published tables' conventions."""
import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from convlstm.evaluation.metrics import (METRIC_NAMES, MetricTotals, frame_metrics, mae_per_frame, mse_per_frame,
                              psnr_per_frame, ssim_per_frame, ssim_uint8_per_frame)

SHAPES = {  # (B, T, C, H, W): the smallest SSIM frame, odd and non-square sizes, several channels, full size
    "B2-T3-C1-7x7": (2, 3, 1, 7, 7),
    "B1-T2-C1-11x8": (1, 2, 1, 11, 8),
    "B2-T2-C3-9x13": (2, 2, 3, 9, 13),
    "B1-T2-C1-64x64": (1, 2, 1, 64, 64),
}


def random_pair(shape, seed):
    """Predictions partly outside [0, 1] (so clipping matters) and targets in [0, 1], float64."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    pred = torch.rand(shape, generator=g, dtype=torch.float64) * 1.4 - 0.2
    return pred, target


def structured_pair(shape, seed):
    """MNIST-like frames: a black background with bright blocks, the prediction shifted and blurred."""
    g = torch.Generator().manual_seed(seed)
    b, t, c, h, w = shape
    target = torch.zeros(shape, dtype=torch.float64)
    for i in range(b):
        for j in range(t):
            y0 = int(torch.randint(0, h - 3, (), generator=g))
            x0 = int(torch.randint(0, w - 3, (), generator=g))
            target[i, j, :, y0:y0 + 4, x0:x0 + 3] = 0.6 + 0.4 * torch.rand((), generator=g).double()
    pred = 0.7 * torch.roll(target, shifts=(1, 1), dims=(3, 4)) + 0.05
    pred[..., 0, 0] = 1.3  # one out-of-range pixel per frame
    return pred, target


def oracle(pred, target):
    """The same metrics frame by frame with scikit-image and numpy: {name: (B, T) array}."""
    p, t = pred.numpy(), target.numpy()
    b, n = p.shape[:2]
    out = {name: np.zeros((b, n)) for name in METRIC_NAMES}
    for i in range(b):
        for j in range(n):
            pij, tij = p[i, j], t[i, j]  # (C, H, W)
            clipped = np.clip(pij, 0, 1)
            out["mse"][i, j] = mean_squared_error(tij, pij) * tij.size
            out["mae"][i, j] = np.abs(tij - pij).sum()
            out["psnr"][i, j] = peak_signal_noise_ratio(tij, clipped, data_range=1.0)
            out["ssim"][i, j] = structural_similarity(clipped, tij, data_range=2.0, channel_axis=0)
            out["ssim_uint8"][i, j] = structural_similarity(np.uint8(clipped * 255), np.uint8(tij * 255),
                                                            channel_axis=0)  # uint8: data_range 255
    return out


@pytest.mark.parametrize("frames", [random_pair, structured_pair], ids=["random", "structured"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_metrics_match_scikit_image_float64(shape, frames):
    pred, target = frames(shape, seed=sum(shape))
    ours = frame_metrics(pred, target)
    expected = oracle(pred, target)
    for name in METRIC_NAMES:
        assert ours[name].shape == shape[:2], name
        assert ours[name].dtype == torch.float64, name
        np.testing.assert_allclose(ours[name].numpy(), expected[name], rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_metrics_match_scikit_image_float32(shape):
    pred, target = structured_pair(shape, seed=1)
    ours = frame_metrics(pred.float(), target.float())
    expected = oracle(pred.float().double(), target.float().double())
    for name in METRIC_NAMES:
        assert ours[name].dtype == torch.float32, name
        np.testing.assert_allclose(ours[name].numpy(), expected[name], rtol=1e-4, atol=2e-4, err_msg=name)


def test_ssim_data_range_two_is_not_data_range_one():
    """The OpenSTL SSIM uses range 2: it must differ from (and read higher than) scikit-image with range 1."""
    pred, target = structured_pair((1, 1, 1, 16, 16), seed=3)
    ours = ssim_per_frame(pred, target).item()
    clipped = np.clip(pred[0, 0, 0].numpy(), 0, 1)
    range_one = structural_similarity(clipped, target[0, 0, 0].numpy(), data_range=1.0)
    assert ours > range_one + 1e-3


def test_exact_prediction_scores_perfectly():
    target = structured_pair((2, 3, 1, 8, 9), seed=4)[1]
    values = frame_metrics(target.clone(), target)
    assert torch.equal(values["mse"], torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(values["mae"], torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(values["psnr"], torch.full((2, 3), 100.0, dtype=torch.float64))  # capped, not inf
    torch.testing.assert_close(values["ssim"], torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(values["ssim_uint8"], torch.ones(2, 3, dtype=torch.float64))


def test_mse_mae_use_raw_predictions_psnr_ssim_clip():
    """A prediction of 1.5 where the target is 1: mse/mae see the 0.5 error, psnr/ssim see a perfect frame."""
    target = torch.ones(1, 1, 1, 8, 8)
    pred = torch.full_like(target, 1.5)
    assert mse_per_frame(pred, target).item() == pytest.approx(64 * 0.25)
    assert mae_per_frame(pred, target).item() == pytest.approx(64 * 0.5)
    assert psnr_per_frame(pred, target).item() == pytest.approx(100.0)
    assert ssim_per_frame(pred, target).item() == pytest.approx(1.0)
    assert ssim_uint8_per_frame(pred, target).item() == pytest.approx(1.0)


def test_uint8_ssim_truncates_like_numpy():
    """0.999 * 255 = 254.7 truncates to 254, not 255: frames that differ below one level score 1 after truncation."""
    target = torch.full((1, 1, 1, 8, 8), 254.2 / 255, dtype=torch.float64)
    pred = torch.full_like(target, 254.9 / 255)
    pred[..., ::2, ::2] = 254.0 / 255
    assert ssim_uint8_per_frame(pred, target).item() == pytest.approx(1.0)
    assert ssim_per_frame(pred, target).item() < 1.0


def test_zero_prediction_values():
    """All-zeros prediction: mse is the target's sum of squares, mae its sum, psnr from its mean square."""
    target = structured_pair((2, 2, 1, 10, 10), seed=5)[1]
    values = frame_metrics(torch.zeros_like(target), target)
    torch.testing.assert_close(values["mse"], target.square().sum(dim=(2, 3, 4)))
    torch.testing.assert_close(values["mae"], target.sum(dim=(2, 3, 4)))
    torch.testing.assert_close(values["psnr"], -10 * torch.log10(target.square().mean(dim=(2, 3, 4))))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        frame_metrics(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="got"):
        frame_metrics(torch.zeros(1, 2, 1, 8, 8), torch.zeros(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 7x7, got 6x9"):
        ssim_per_frame(torch.zeros(1, 1, 1, 6, 9), torch.zeros(1, 1, 1, 6, 9))


def test_totals_average_over_sequences_per_frame():
    pred, target = random_pair((5, 4, 1, 9, 9), seed=6)
    whole = frame_metrics(pred, target)
    totals = MetricTotals(n_frames=4)
    for chunk in (slice(0, 2), slice(2, 3), slice(3, 5)):  # uneven batches
        totals.add(frame_metrics(pred[chunk], target[chunk]))
    totals.all_reduce()  # no process group: a no-op
    summary = totals.summary()
    assert summary["num_sequences"] == 5
    for name in METRIC_NAMES:
        assert len(summary["per_frame"][name]) == 4
        np.testing.assert_allclose(summary["per_frame"][name], whole[name].mean(dim=0).numpy(), rtol=1e-12)
        assert summary[name] == pytest.approx(whole[name].mean().item(), rel=1e-12)


def test_empty_totals_refuse_summary():
    with pytest.raises(ValueError, match="no sequences"):
        MetricTotals(n_frames=3).summary()
