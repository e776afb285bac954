"""OpenSTLConvLSTM against the transcription of OpenSTL's code (openstl_reference.py): state_dicts both ways, outputs,
loss and every gradient with equal weights, the test-time path, the patch reshape and the sampling masks; the fused
gate path against plain PyTorch; the presets and the published parameter counts."""
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import openstl_reference as ref
from convlstm.ops.lstm_gates import backends, lstm_gates
from convlstm.openstl import (PRESETS, OpenSTLConvLSTM, OpenSTLConvLSTMCell, evaluation_mask, reshape_patch,
                              reshape_patch_back, reserve_schedule_sampling_exp, schedule_sampling)
from helpers import default_dtype, device_backend_cases

HAS_GATE_ORDER = "gate_order" in inspect.signature(lstm_gates).parameters
needs_gate_order = pytest.mark.skipif(not HAS_GATE_ORDER, reason="lstm_gates has no gate_order option yet")

# Tiny: 2 channels, 8x12 frames in 2x2 patches (a 4x6 grid of 8 channels), 3 + 3 frames, two layers.
IN_SHAPE = (3, 2, 8, 12)
PATCH, PRE, AFT, HIDDEN = 2, 3, 3, [5, 3]


def hparams(reverse=0, layer_norm=0, pre=PRE, aft=AFT, in_shape=IN_SHAPE, **extra):
    return SimpleNamespace(in_shape=in_shape, patch_size=PATCH, filter_size=3, stride=1, layer_norm=layer_norm,
                           pre_seq_length=pre, aft_seq_length=aft, total_length=pre + aft,
                           reverse_scheduled_sampling=reverse, device="cpu", **extra)


def reference_model(args, cell_output="tanh_c", num_hidden=HIDDEN):
    cell = ref.ConvLSTMCellV020 if cell_output == "g" else ref.ConvLSTMCell
    model = ref.ConvLSTM_Model(len(num_hidden), num_hidden, args, cell=cell)
    with torch.no_grad():  # LayerNorm starts at weight 1, bias 0: make them count
        for name, p in model.named_parameters():
            if ".1." in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def our_model(args, cell_output="tanh_c", backend="torch", num_hidden=HIDDEN):
    return OpenSTLConvLSTM(num_hidden, in_shape=args.in_shape, pre_seq_length=args.pre_seq_length,
                           aft_seq_length=args.aft_seq_length, filter_size=args.filter_size, stride=args.stride,
                           patch_size=args.patch_size, layer_norm=args.layer_norm,
                           reverse_scheduled_sampling=args.reverse_scheduled_sampling, cell_output=cell_output,
                           backend=backend)


def pair(args, cell_output="tanh_c", dtype=torch.float64, backend="torch"):
    """(ours, theirs) with theirs' random weights loaded strictly into ours, in `dtype`."""
    torch.manual_seed(0)
    theirs = reference_model(args, cell_output).to(dtype)
    ours = our_model(args, cell_output, backend).to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def inputs(args, batch=2, dtype=torch.float64, seed=1):
    """Patch frames (B, pre + aft, H/p, W/p, p*p*C) and a mask of ones and zeros in a checkerboard over (sample,
    step), of the length the model reads (aft - 1, or pre + aft - 2 reversed)."""
    g = torch.Generator().manual_seed(seed)
    t, c, h, w = args.in_shape
    frames = torch.rand(batch, args.total_length, h // PATCH, w // PATCH, PATCH * PATCH * c, generator=g, dtype=dtype)
    steps = args.total_length - 2 if args.reverse_scheduled_sampling else args.aft_seq_length - 1
    token = (torch.arange(batch)[:, None] + torch.arange(steps)) % 2 == 0
    mask = token[:, :, None, None, None].expand(-1, -1, *frames.shape[2:]).to(dtype)
    return frames, mask


def run(model, frames, mask):
    """Outputs, loss and {name: grad} after backward of the loss."""
    model.zero_grad(set_to_none=True)
    frames_out, loss = model(frames, mask)
    loss.backward()
    return frames_out, loss, {name: p.grad for name, p in model.named_parameters()}


def assert_same_run(got, want, atol, rtol=0.0):
    (frames_got, loss_got, grads_got), (frames_want, loss_want, grads_want) = got, want
    torch.testing.assert_close(frames_got, frames_want, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_got, loss_want, atol=atol, rtol=rtol)
    assert grads_got.keys() == grads_want.keys()
    for name, grad in grads_want.items():
        if grad is None:  # conv_o and the cells' conv_last: parameters forward never uses
            assert grads_got[name] is None, name
        else:
            torch.testing.assert_close(grads_got[name], grad, atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("layer_norm", [0, 1], ids=["plain", "layernorm"])
def test_state_dict_keys_shapes_and_strict_load_both_ways(layer_norm):
    args = hparams(layer_norm=layer_norm)
    theirs, ours = reference_model(args), our_model(args)
    want = {k: v.shape for k, v in theirs.state_dict().items()}
    assert list(ours.state_dict()) == list(want)
    assert {k: v.shape for k, v in ours.state_dict().items()} == want
    assert "cell_list.0.conv_x.0.weight" in want and "conv_last.weight" in want
    assert ("cell_list.1.conv_h.1.weight" in want) == bool(layer_norm)
    if layer_norm:  # LayerNorm over (4C, H/p, W/p) of conv_x / conv_h, (C, H/p, W/p) of conv_o
        assert want["cell_list.1.conv_h.1.weight"] == (4 * HIDDEN[1], 4, 6)
        assert want["cell_list.1.conv_o.1.bias"] == (HIDDEN[1], 4, 6)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(our_model(args).state_dict(), strict=True)


@pytest.mark.parametrize("cell_output", ["tanh_c", "g"], ids=["head", "v020"])
@pytest.mark.parametrize("layer_norm", [0, 1], ids=["plain", "layernorm"])
@pytest.mark.parametrize("reverse", [0, 1], ids=["sampling", "reverse"])
def test_matches_openstl_torch_float64(reverse, layer_norm, cell_output):
    args = hparams(reverse=reverse, layer_norm=layer_norm)
    ours, theirs = pair(args, cell_output)
    frames, mask = inputs(args)
    assert 0 < mask.sum() < mask.numel()  # both ground truth and the model's own output are fed
    with default_dtype(torch.float64):
        want = run(theirs, frames, mask)
    got = run(ours, frames, mask)
    assert got[0].shape == (2, PRE + AFT - 1, 4, 6, 8)
    assert_same_run(got, want, atol=1e-12)


def test_matches_openstl_float32_and_ours_loads_into_theirs():
    args = hparams(reverse=0)
    torch.manual_seed(3)
    ours = our_model(args)
    theirs = ref.ConvLSTM_Model(len(HIDDEN), HIDDEN, args)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    frames, mask = inputs(args, dtype=torch.float32)
    assert_same_run(run(ours, frames, mask), run(theirs, frames, mask), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reverse", [0, 1], ids=["sampling", "reverse"])
@pytest.mark.parametrize("cell_output", ["tanh_c", "g"], ids=["head", "v020"])
def test_predict_is_openstl_test_path(cell_output, reverse):
    args = hparams(reverse=reverse)
    ours, theirs = pair(args, cell_output)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, PRE, 2, 8, 12, generator=g, dtype=torch.float64)
    y = torch.rand(2, AFT, 2, 8, 12, generator=g, dtype=torch.float64)  # ground truth: must not matter
    with torch.no_grad(), default_dtype(torch.float64):
        want = ref.predrnn_forward(theirs, x, y, args)
        got = ours.predict(x, AFT)
    assert got.shape == (2, AFT, 2, 8, 12)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("t_in, n_out", [(1, 1), (2, 4), (5, 2)], ids=["1in-1out", "2in-4out", "5in-2out"])
def test_predict_other_lengths_is_openstl_configured_for_them(t_in, n_out):
    ours, _ = pair(hparams())
    args = hparams(pre=t_in, aft=n_out)  # OpenSTL's weights do not depend on the lengths
    theirs = ref.ConvLSTM_Model(len(HIDDEN), HIDDEN, args).double()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(2, t_in, 2, 8, 12, dtype=torch.float64)
    with torch.no_grad(), default_dtype(torch.float64):
        want = ref.predrnn_forward(theirs, x, torch.zeros(2, n_out, 2, 8, 12), args)
        got = ours.predict(x, n_out)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


FUSED_CASES = device_backend_cases(backends=("triton", "cuda", "cpu_twin"))


@needs_gate_order
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layer_norm", [0, 1], ids=["plain", "layernorm"])
@pytest.mark.parametrize("device, backend", FUSED_CASES)
def test_fused_gates_match_torch(device, backend, layer_norm, dtype, atol):
    args = hparams(reverse=1, layer_norm=layer_norm)
    reference, _ = pair(args, dtype=dtype)
    fused = our_model(args, backend=backend).to(dtype)
    fused.load_state_dict(reference.state_dict(), strict=True)
    reference, fused = reference.to(device), fused.to(device)
    assert all(cell.fused for cell in fused.cell_list) and not any(cell.fused for cell in reference.cell_list)
    frames, mask = (t.to(device) for t in inputs(args, dtype=dtype))
    assert_same_run(run(fused, frames, mask), run(reference, frames, mask), atol=atol, rtol=atol)


def test_fused_backend_without_gate_order_fails_on_use_named_and_runs_torch_on_auto(monkeypatch):
    """A fused gate function without the gate_order option (lstm_gates before it had one) cannot run OpenSTL's
    i, f, g, o order: a backend named explicitly fails on use with the reason, "auto" runs the plain PyTorch math."""
    def old_gates_fn(gates, c_prev, w_ci=None, w_cf=None, w_co=None):
        raise AssertionError("called without gate_order")

    monkeypatch.setattr(backends, "resolve", lambda backend, device: ("cpu_twin", old_gates_fn))
    x, h = torch.rand(1, 2, 4, 4), torch.zeros(1, 3, 4, 4)
    named = OpenSTLConvLSTMCell(2, 3, 4, 4, 3, 1, 0, backend="cpu_twin")
    with pytest.raises(RuntimeError, match="no gate_order option"):
        named(x, h, h)
    auto = OpenSTLConvLSTMCell(2, 3, 4, 4, 3, 1, 0, backend="auto")
    auto.load_state_dict(named.state_dict())
    assert not auto.fused
    plain = OpenSTLConvLSTMCell(2, 3, 4, 4, 3, 1, 0, backend="torch")
    plain.load_state_dict(named.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(auto(x, h, h), plain(x, h, h)))


def test_no_forget_bias_and_gate_order_ifgo():
    """One step from zero state with only the g block of conv_x set: OpenSTL's order is i, f, g, o, and f gets no
    forget bias (its `_forget_bias = 1.0` is never read)."""
    cell = OpenSTLConvLSTMCell(1, 1, 1, 1, 1, 1, 0, backend="torch").double()
    with torch.no_grad():
        cell.conv_x[0].weight.copy_(torch.tensor([0.0, 0.0, 2.0, 0.0]).view(4, 1, 1, 1))
        cell.conv_h[0].weight.zero_()
    x, c = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.ones(1, 1, 1, 1, dtype=torch.float64)
    h_next, c_next = cell(x, torch.zeros_like(x), c)
    c_want = 0.5 * 1.0 + 0.5 * np.tanh(2.0)  # f = sigmoid(0) = 0.5: no forget bias
    torch.testing.assert_close(c_next.item(), c_want)
    torch.testing.assert_close(h_next.item(), 0.5 * np.tanh(c_want))


@pytest.mark.parametrize("patch_size", [1, 2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_reshape_patch_round_trip_and_matches_openstl(patch_size, channels):
    img = torch.rand(2, 3, 8, 12, channels)
    patches = reshape_patch(img, patch_size)
    assert patches.shape == (2, 3, 8 // patch_size, 12 // patch_size, patch_size * patch_size * channels)
    assert torch.equal(patches, ref.reshape_patch(img, patch_size))
    assert torch.equal(reshape_patch_back(patches, patch_size), img)
    assert torch.equal(reshape_patch_back(patches, patch_size), ref.reshape_patch_back(patches, patch_size))


def test_reshape_patch_order_and_errors():
    img = torch.arange(4.0).view(1, 1, 2, 2, 1)  # [[0, 1], [2, 3]]
    assert reshape_patch(img, 2).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]  # row in patch, then column
    with pytest.raises(ValueError, match="divide"):
        reshape_patch(torch.rand(1, 1, 6, 8, 1), 4)


SCHEDULE = dict(scheduled_sampling=1, sampling_stop_iter=5, sampling_changing_rate=0.15)


def test_schedule_sampling_matches_openstl():
    """Carried eta, draws from np.random's global state: the same masks and eta for the same seed, step by step
    past sampling_stop_iter (a fast schedule so every eta from 1 to 0 shows)."""
    args = hparams(**SCHEDULE)
    eta_ours = eta_theirs = 1.0
    for itr in range(8):
        np.random.seed(itr)
        eta_theirs, want = ref.schedule_sampling(eta_theirs, itr, 3, args)
        np.random.seed(itr)
        eta_ours, got = schedule_sampling(eta_ours, itr, 3, IN_SHAPE, PATCH, AFT, **SCHEDULE)
        assert eta_ours == eta_theirs
        assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want), itr
    assert eta_ours == 0.0
    eta, mask = schedule_sampling(1.0, 0, 3, IN_SHAPE, PATCH, AFT, scheduled_sampling=0)
    _, want = ref.schedule_sampling(1.0, 0, 3, hparams(scheduled_sampling=0))  # a numpy array there
    assert eta == 0.0 and torch.equal(mask, torch.from_numpy(want).float())


def test_schedule_sampling_first_step_and_generator():
    eta, mask = schedule_sampling(1.0, 0, 4, IN_SHAPE, PATCH, AFT, rng=np.random.default_rng(0))
    assert eta == 1.0 - 0.00002 and mask.shape == (4, AFT - 1, 4, 6, 8)
    eta, mask = schedule_sampling(eta, 50000, 4, IN_SHAPE, PATCH, AFT, rng=np.random.default_rng(0))
    assert eta == 0.0 and not mask.any()


REVERSE = dict(r_sampling_step_1=2, r_sampling_step_2=6, r_exp_alpha=2)


def test_reserve_schedule_sampling_matches_openstl():
    args = hparams(reverse=1, **REVERSE)
    for itr in range(9):
        np.random.seed(100 + itr)
        want = ref.reserve_schedule_sampling_exp(itr, 3, args)
        np.random.seed(100 + itr)
        got = reserve_schedule_sampling_exp(itr, 3, IN_SHAPE, PATCH, PRE, AFT, **REVERSE)
        assert got.shape == (3, PRE + AFT - 2, 4, 6, 8)
        assert torch.equal(got, want), itr
    late = reserve_schedule_sampling_exp(6, 3, IN_SHAPE, PATCH, PRE, AFT, **REVERSE)
    assert late[:, :PRE - 1].all() and not late[:, PRE - 1:].any()  # inputs all ground truth, outputs all own


@pytest.mark.parametrize("reverse", [False, True], ids=["sampling", "reverse"])
def test_evaluation_mask_is_openstls(reverse):
    mask = evaluation_mask(2, IN_SHAPE, PATCH, PRE, AFT, reverse=reverse)
    steps = PRE + AFT - 2 if reverse else AFT - 1
    want = torch.zeros(2, steps, 4, 6, 8)
    if reverse:
        want[:, :PRE - 1] = 1.0
    assert torch.equal(mask, want)


def test_presets_are_openstls_configs():
    common = dict(filter_size=5, stride=1, patch_size=4, layer_norm=0, lr=5e-4, batch_size=16, sched="onecycle",
                  scheduled_sampling=1, sampling_stop_iter=50000, sampling_start_value=1.0,
                  sampling_changing_rate=0.00002, reverse_scheduled_sampling=0, in_shape=(10, 1, 64, 64),
                  pre_seq_length=10, aft_seq_length=10)
    assert PRESETS["convlstm_s"]["num_hidden"] == [128, 128, 128, 128]
    assert PRESETS["convlstm_l"]["num_hidden"] == [192, 192, 192, 192]
    for preset in PRESETS.values():
        assert {k: preset[k] for k in common} == common


@pytest.mark.parametrize("preset, in_shape, patch_size, count, published", [
    ("convlstm_s", (10, 1, 64, 64), 4, 15_083_520, "15.0M"),   # Moving MNIST (and MFMNIST)
    ("convlstm_l", (10, 1, 64, 64), 4, 33_782_784, "33.8M"),
    ("convlstm_s", (10, 3, 64, 64), 4, 15_497_216, "15.5M"),   # Moving MNIST-CIFAR
    ("convlstm_l", (10, 3, 64, 64), 4, 34_403_328, "34.4M"),
    ("convlstm_s", (10, 3, 128, 160), 2, 15_031_808, "15.0M"),  # KittiCaltech (patch_size 2 in its config)
], ids=["S-mmnist", "L-mmnist", "S-mmnist_cifar", "L-mmnist_cifar", "S-kitticaltech"])
def test_parameter_count_is_published(preset, in_shape, patch_size, count, published):
    """OpenSTL's docs/en/model_zoos/video_benchmarks.md; the counts include conv_o and the cells' conv_last (without
    them ConvLSTM-S would be 11.7M). ConvLSTM-S on Moving MNIST is 15.08M, which the table prints as 15.0M where
    every other row is rounded (15.1M): within 0.1M of it."""
    with torch.device("meta"):
        model = OpenSTLConvLSTM.from_preset(preset, in_shape=in_shape, patch_size=patch_size, backend="torch")
    assert sum(p.numel() for p in model.parameters()) == count
    assert abs(count / 1e6 - float(published[:-1])) <= 0.1 + 1e-9


def test_invalid_arguments_fail_with_the_reason():
    args = hparams()
    with pytest.raises(ValueError, match="stride"):
        OpenSTLConvLSTMCell(2, 3, 4, 4, 3, 2, 0)
    with pytest.raises(RuntimeError):  # OpenSTL's own cell with stride 2 fails on its first step
        cell = ref.ConvLSTMCell(2, 3, 4, 4, 3, 2, 0)
        cell(torch.rand(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="odd"):
        OpenSTLConvLSTMCell(2, 3, 4, 4, 4, 1, 0)
    with pytest.raises(ValueError, match="runs on backend 'torch' only"):
        OpenSTLConvLSTMCell(2, 3, 4, 4, 3, 1, 0, cell_output="g", backend="triton")
    ours = our_model(args)
    frames, mask = inputs(args, dtype=torch.float32)
    with pytest.raises(ValueError, match="frames_tensor"):
        ours(frames[:, 1:], mask)
    with pytest.raises(ValueError, match="mask_true must hold 2 steps"):
        ours(frames, torch.zeros(2, PRE + AFT - 2, 4, 6, 8))
    with pytest.raises(ValueError, match="2-channel"):
        ours.predict(torch.rand(1, 2, 1, 8, 12), 2)
