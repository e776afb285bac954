"""train.py in one process on the CPU: outputs a user sees, resume, errors, AMP, channels_last and cudnn_benchmark,
sampling and the image grid.

Runs call train.main(argv) in this process with a tiny model (n_hidden_dim 4, 16x16 frames, a few steps); the
torchrun launches live in test_train_distributed.py.
"""
import json
import os
import re
import urllib.request

import pytest
import torch

from convlstm.cell import ConvLSTMCell
from convlstm.evaluation.metrics import METRIC_NAMES
from convlstm.model import model_from_config, to_btchw
from convlstm.openstl import OpenSTLConvLSTMCell
from convlstm.training.amp import Precision
from convlstm.training.config import parse_config, resolve_config
from convlstm.runtime import DistInfo, distributed
from convlstm.training.distributed import ResumableSampler
from convlstm.training.logs import prediction_grid
from helpers import TINY, assert_same_weights, device_backend_cases, gpu_test, run, single_process_group, train_script


def test_tiny_run_writes_checkpoint_tensorboard_log_and_picture(tmp_path, monkeypatch, capsys):
    compiled = []

    class FakeCompiled(torch.nn.Module):
        """Stands in for torch.compile (whose CPU compile of this model takes minutes): records the wrapping."""

        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, *args, **kwargs):
            compiled.append(1)
            return self._orig_mod(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", FakeCompiled)
    run_dir = tmp_path / "run"
    assert run(run_dir, "--max_steps", 4, "--image_every", 2, "--checkpoint_every", 2, "--tensorboard",
               "--compile") == 0
    assert len(compiled) == 4  # every training step went through the compiled wrapper

    checkpoints = sorted(os.listdir(run_dir / "checkpoints"))
    assert checkpoints == ["best.pt", "latest.pt", "step_2.pt", "step_4.pt"]
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert {"model", "optimizer", "scaler", "step", "epoch", "config", "rng", "sampler", "val_loss"} <= state.keys()
    assert state["step"] == 4 and state["sampler"] == {"epoch": 0, "samples_seen": 16}
    config = state["config"]
    assert (config["n_hidden_dim"], config["image_size"], config["n_steps_past"], config["n_steps_ahead"],
            config["kernel_size"], config["peephole"], config["in_chan"], config["seed"], config["backend"],
            config["data"], config["amp"]) == (4, 16, 10, 10, 3, False, 1, 0, "auto", None, "none")
    assert json.loads((run_dir / "config.json").read_text()) == config
    model = model_from_config(config)
    model.load_state_dict(state["model"])  # keys of the plain model: no "module." / "_orig_mod." prefix
    assert 0 < state["val_loss"] < 1
    assert torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["val_loss"] == state["val_loss"]
    # Validation reports evaluate.py's metrics; the loss best.pt is chosen by is their "mse" (a per-frame sum over
    # pixels) divided by the 16x16 pixels.
    metrics = state["val_metrics"]
    assert set(metrics) == set(METRIC_NAMES)
    assert metrics["mse"] / (16 * 16) == pytest.approx(state["val_loss"], rel=1e-6)
    assert 0 < metrics["ssim"] < 1 and metrics["psnr"] > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/sequences_per_s"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 4], tag  # 1: an early report (logs.EARLY_STEPS)
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-4)
    assert events.Scalars("val/loss")[0].value == pytest.approx(state["val_loss"])
    for name in METRIC_NAMES:
        assert events.Scalars(f"val/{name}")[-1].value == pytest.approx(metrics[name], rel=1e-6), name
    images = events.Images("predictions")
    assert [im.step for im in images] == [2, 4]
    # 3 rows and 20 frames of 16x16 with 2 pixels of padding: (3 * 18 + 2) x (20 * 18 + 2)
    assert (images[0].height, images[0].width) == (56, 362)
    from PIL import Image
    with Image.open(run_dir / "predictions.png") as picture:  # the grid, with its rows named in a margin on the left
        assert picture.size == (120 + 362, 56)

    log = (run_dir / "train.log").read_text()
    assert "step 4/4" in log and "validation loss" in log and "sequences/s" in log
    err = capsys.readouterr().err
    address = next(line.split(" at ")[-1] for line in err.splitlines() if "TensorBoard serving" in line)
    with urllib.request.urlopen(address, timeout=30) as page:
        assert page.status == 200


def test_resume_mid_epoch_equals_uninterrupted_bit_for_bit_and_survives_a_corrupt_latest(tmp_path, capsys):
    # 9 steps cross an epoch (6 steps each); the interrupted run stops at step 4, mid-epoch.
    assert run(tmp_path / "whole", "--max_steps", 9, "--checkpoint_every", 100) == 0
    assert run(tmp_path / "parts", "--max_steps", 4, "--checkpoint_every", 100) == 0
    latest = tmp_path / "parts" / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # a torn write: resume must name it and use step_4.pt
    capsys.readouterr()
    assert run(tmp_path / "parts", "--max_steps", 9, "--checkpoint_every", 100, "--resume") == 0
    err = capsys.readouterr().err
    assert f"checkpoint {latest} is unreadable" in err and "resumed from step 4 (epoch 0, 16 sequences" in err
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "latest.pt", weights_only=True)
    parts = torch.load(latest, weights_only=True)
    assert whole["step"] == parts["step"] == 9
    assert_same_weights(whole["model"], parts["model"])
    for a, b in zip(whole["optimizer"]["state"].values(), parts["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_start_over_a_run_and_never_starts_fresh_from_unreadable_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(run_dir, "--max_steps", 2, "--checkpoint_every", 1) == 0
    before = {name: (run_dir / "checkpoints" / name).read_bytes() for name in os.listdir(run_dir / "checkpoints")}
    capsys.readouterr()
    assert run(run_dir, "--max_steps", 2) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert {name: (run_dir / "checkpoints" / name).read_bytes() for name in before} == before

    for name in before:
        (run_dir / "checkpoints" / name).write_bytes(b"not a checkpoint")
    assert run(run_dir, "--max_steps", 4, "--resume") == 1
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "latest.pt is unreadable" in err and "step_1.pt is unreadable" in err
    assert sorted(os.listdir(run_dir / "checkpoints")) == sorted(before)  # nothing written over them


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    build = train_script.model_from_config

    def model_turning_nan_at_call_3(*args, **kwargs):
        model = build(*args, **kwargs)
        plain_forward, calls = model.forward, []

        def forward(*args, **kwargs):
            calls.append(1)
            out = plain_forward(*args, **kwargs)
            return out * float("nan") if len(calls) == 3 else out

        model.forward = forward
        return model

    monkeypatch.setattr(train_script, "model_from_config", model_turning_nan_at_call_3)
    run_dir = tmp_path / "run"
    assert run(run_dir, "--max_steps", 6, "--checkpoint_every", 2, "--log_every", 100) == 1
    assert "non-finite training loss at step 3" in capsys.readouterr().err
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["latest.pt", "step_2.pt"]


@gpu_test
def test_tiny_run_on_the_gpu(tmp_path):
    """train.py on the GPU: bf16 autocast and the fused gate backends train, and each fused backend's run follows
    the eager reference's (validation loss after 2 and 4 steps; float32, the same cuDNN convolutions)."""
    gpu = ["--device", "cuda", "--max_steps", 4, "--num_train", 8]  # 2 steps per epoch: validation at 2 and 4
    assert run(tmp_path / "bf16", *gpu, "--amp", "bf16") == 0
    log = (tmp_path / "bf16" / "train.log").read_text()
    assert "on cuda" in log and "amp bf16" in log and "gate backend cuda" in log
    assert 0 < torch.load(tmp_path / "bf16" / "checkpoints" / "latest.pt", weights_only=True)["val_loss"] < 1

    def val_losses(backend):
        assert run(tmp_path / backend, *gpu, "--amp", "none", "--backend", backend) == 0
        return [torch.load(tmp_path / backend / "checkpoints" / f"step_{step}.pt", weights_only=True)["val_loss"]
                for step in (2, 4)]

    want = val_losses("torch")
    for backend in ("cuda", "triton"):
        assert val_losses(backend) == pytest.approx(want, rel=1e-3), backend


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "--lr -1.0: must be positive"),
    (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
    (["--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["--backend", "magic"], "argument --backend: invalid choice: 'magic'"),
    (["--use_amp", "maybe"], "argument --use_amp: expected a boolean"),
    (["--use_amp", "True", "--amp", "none"], "--use_amp True contradicts --amp none"),
    (["--cudnn_benchmark", "maybe"], "argument --cudnn_benchmark: expected a boolean (True/False, 1/0, yes/no), got "
                                     "'maybe'"),
    (["--kernel_size", "4"], "--kernel_size 4: must be odd"),
    (["--val_fraction", "1"], "--val_fraction 1.0: must be in [0, 1)"),
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
], ids=["negative-lr", "zero-batch", "amp-fp8", "unknown-backend", "use_amp-maybe", "use_amp-vs-amp", "cudnn-maybe",
        "even-kernel", "val-fraction-1", "unknown-flag"])
def test_bad_flags_exit_with_status_2_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--data", "/no/such/videos"], "cannot read --data /no/such/videos: /no/such/videos does not exist"),
    (["--digits", "/no/such/mnist"], "/no/such/mnist"),
    (["--num_train", "3"], "3 training sequences are fewer than one global batch"),
    (["--image_size", "6"], "image_size=6 is too small"),
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--backend", "cuda"], "backend 'cuda' is not available"),
], ids=["missing-data", "missing-digits-dir", "too-few-sequences", "tiny-image", "no-gpu", "backend-unavailable"])
def test_setup_problems_exit_with_status_1_and_a_message(tmp_path, flags, message, capsys):
    if torch.cuda.is_available() and "cuda" in flags:
        pytest.skip("this machine has a GPU")
    assert run(tmp_path / "run", *flags) == 1
    err = capsys.readouterr().err
    assert "train.py: error:" in err and message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_use_amp_and_amp_resolve_per_device():
    def amp(flags, device_type, bf16=True):
        return resolve_config(parse_config(flags), device_type, bf16).amp

    assert amp([], "cpu") == "none" and amp([], "cuda") == "bf16" and amp([], "cuda", bf16=False) == "none"
    assert amp(["--use_amp"], "cuda") == "fp16" and amp(["--use_amp", "True"], "cpu") == "bf16"
    assert amp(["--use_amp", "False"], "cuda") == "none"
    assert amp(["--amp", "fp16"], "cpu") == "fp16" and amp(["--use_amp", "1", "--amp", "fp16"], "cpu") == "fp16"
    assert parse_config(["--lr", "3e-4", "--beta_1", "0.8", "--epochs", "2"]).lr == 3e-4


def test_cudnn_benchmark_resolves_on_for_cuda_unless_turned_off():
    def benchmark(flags, device_type):
        return resolve_config(parse_config(flags), device_type, True).cudnn_benchmark

    assert benchmark([], "cuda") is True and benchmark([], "cpu") is False
    assert benchmark(["--cudnn_benchmark", "false"], "cuda") is False and benchmark(["--cudnn_benchmark", "0"],
                                                                                    "cuda") is False
    assert benchmark(["--cudnn_benchmark"], "cpu") is True and benchmark(["--cudnn_benchmark", "yes"], "cuda") is True


@pytest.mark.parametrize("device, backend", device_backend_cases(backends=("torch",)))
def test_cudnn_benchmark_is_set_at_start_up_on_cuda_only(tmp_path, monkeypatch, device, backend):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test: it is process-wide
    flags = ["--max_steps", 1, "--device", device, "--backend", backend]
    assert run(tmp_path / "default", *flags) == 0
    assert torch.backends.cudnn.benchmark is (device == "cuda")  # the CPU has no cuDNN: left as it was
    assert run(tmp_path / "off", *flags, "--cudnn_benchmark", "false") == 0
    assert torch.backends.cudnn.benchmark is False
    saved = [json.loads((tmp_path / run_dir / "config.json").read_text())["cudnn_benchmark"]
             for run_dir in ("default", "off")]
    assert saved == [device == "cuda", False]


def channels_innermost(t):
    """Whether a (B, C, H, W) tensor is laid out as torch.channels_last lays it out, channels innermost; unlike
    is_contiguous(memory_format=...) also for a frame sliced out of a batch, which is contiguous in neither."""
    return t.stride(1) == 1 and t.stride(3) == t.shape[1]


# OpenSTL's model on the tiny configuration: 16x16 frames in 4x4 patches (16 channels), two layers of 4.
MODELS = [pytest.param([], id="tutorial"),
          pytest.param(["--model", "openstl_convlstm", "--num_layers", 2], id="openstl")]


@pytest.mark.parametrize("model", MODELS)
def test_channels_last_trains_as_nchw_does_to_float32_rounding_and_may_change_on_resume(tmp_path, model, capsys):
    flags = [*model, "--checkpoint_every", 100, "--backend", "torch"]
    assert run(tmp_path / "nchw", *flags, "--max_steps", 6) == 0
    assert run(tmp_path / "nhwc", *flags, "--max_steps", 6, "--channels_last") == 0
    assert run(tmp_path / "parts", *flags, "--max_steps", 3) == 0  # then 3 steps more in channels_last
    capsys.readouterr()
    assert run(tmp_path / "parts", *flags, "--max_steps", 6, "--channels_last", "--resume") == 0
    assert "channels_last False -> True" in capsys.readouterr().err  # "flags changed since the checkpoint: ..."

    def latest(name):
        return torch.load(tmp_path / name / "checkpoints" / "latest.pt", weights_only=True)

    nchw = latest("nchw")
    assert not any(channels_innermost(w) for w in nchw["model"].values() if w.dim() == 4)
    for name in ("nhwc", "parts"):
        state = latest(name)
        assert state["step"] == 6 and state["config"]["channels_last"]
        # The Conv2d weights were trained in channels_last (a 1x1 kernel has the same strides in both layouts).
        assert all(channels_innermost(w) for w in state["model"].values() if w.dim() == 4 and w.shape[-1] > 1)
        # The same math through other convolution kernels (oneDNN's NHWC ones). On this 2-core VM (torch 2.13 CPU)
        # the weights after 6 Adam steps differed by at most 1.5e-8 (tutorial) and 7.5e-9 (OpenSTL), one float32
        # ulp of the largest weights (0.16, 0.5), and the validation losses by at most 1.6e-9 relative. The bounds
        # leave 60x and 600x for other CPUs' kernels, far below what a step moves a weight (up to lr, 1e-4 here).
        assert state["val_loss"] == pytest.approx(nchw["val_loss"], rel=1e-6), name
        for key, weight in nchw["model"].items():
            torch.testing.assert_close(state["model"][key], weight, rtol=0, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.parametrize("device, backend", device_backend_cases(backends=("torch", "cpu_twin"), devices=("cpu",))
                         + device_backend_cases(backends=("torch", "triton", "cuda"), devices=("cuda",)))
@pytest.mark.parametrize("model", MODELS)
def test_channels_last_keeps_frames_states_and_gates_channels_last(tmp_path, monkeypatch, model, device, backend):
    """Every 4-D tensor into or out of a ConvLSTM cell or a Conv2d (frames, concatenations, h and c from the zero
    state on, gates) is channels_last in a --channels_last run, and none is in a run without it. (The fused backends
    call F.conv2d in training: their Conv2d modules are seen in validation, their gates only through h and c.)"""
    build, layouts = train_script.model_from_config, []

    def record(module, args, kwargs, output):
        def tensors(tree):
            if isinstance(tree, torch.Tensor):
                yield tree
            elif isinstance(tree, (list, tuple, dict)):
                for item in tree.values() if isinstance(tree, dict) else tree:
                    yield from tensors(item)

        layouts.extend((type(module).__name__, channels_innermost(t)) for t in tensors([args, kwargs, output])
                       if t.dim() == 4)

    def model_recording_layouts(*args, **kwargs):
        model = build(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, ConvLSTMCell, OpenSTLConvLSTMCell)):
                module.register_forward_hook(record, with_kwargs=True)
        return model

    monkeypatch.setattr(train_script, "model_from_config", model_recording_layouts)
    flags = [*model, "--max_steps", 1, "--device", device, "--backend", backend]
    assert run(tmp_path / "nhwc", *flags, "--channels_last") == 0
    modules = {name for name, _ in layouts}
    assert {"Conv2d", "OpenSTLConvLSTMCell" if model else "ConvLSTMCell"} <= modules
    assert all(innermost for _, innermost in layouts)
    layouts.clear()
    assert run(tmp_path / "nchw", *flags) == 0
    assert layouts and not any(innermost for _, innermost in layouts)


def test_fp16_clips_unscaled_gradients():
    """With fp16 the loss is scaled by 2^16 for backward; clipping must see gradients divided back. With SGD(lr=1)
    the update is the clipped gradient: its norm must be grad_clip, and the reported norm the fp32 one."""
    def one_step(amp, grad_clip):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 1))
        before = [p.detach().clone() for p in model.parameters()]
        precision = Precision(amp, torch.device("cpu"))
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with precision.autocast():
            out = model(x)
        loss = 1e-3 * (out.float() - 1).pow(2).mean()  # small enough that 2^16-scaled fp16 grads stay finite
        precision.backward(loss)
        grad_norm = precision.step(optimizer, model.parameters(), grad_clip)
        update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
        return grad_norm, update.norm(), precision.scaler.get_scale()

    fp32_norm, _, _ = one_step("none", 0.0)
    fp16_norm, fp16_update, scale = one_step("fp16", 0.5 * fp32_norm.item())
    assert scale == 2.0 ** 16  # the loss really was scaled (and the step not skipped)
    assert fp16_norm.item() == pytest.approx(fp32_norm.item(), rel=1e-2)
    assert fp16_update.item() == pytest.approx(0.5 * fp32_norm.item(), rel=1e-2)
    bf16_norm, bf16_update, _ = one_step("bf16", 0.0)
    assert bf16_norm.item() == pytest.approx(fp32_norm.item(), rel=5e-2)


def test_sampler_gives_n_ranks_the_global_batches_of_one_process_and_resumes_mid_epoch():
    dataset, batch, world = range(23), 2, 3

    def global_batches(num_replicas, per_rank_batch, epoch, samples_seen=0):
        per_rank = []
        for rank in range(num_replicas):
            sampler = ResumableSampler(dataset, num_replicas, rank, seed=5)
            sampler.set_epoch(epoch, samples_seen)
            indices = list(sampler)
            assert len(indices) == len(sampler)
            per_rank.append([indices[i:i + per_rank_batch] for i in range(0, len(indices) - per_rank_batch + 1,
                                                                            per_rank_batch)])
        return [sorted(sum(step, [])) for step in zip(*per_rank)]

    one_process = global_batches(1, batch * world, epoch=1)
    assert len(one_process) == 23 // 6 and all(len(b) == 6 for b in one_process)
    assert global_batches(world, batch, epoch=1) == one_process
    assert global_batches(world, batch, epoch=1, samples_seen=12) == one_process[2:]
    assert global_batches(world, batch, epoch=2) != one_process  # set_epoch reshuffles
    with pytest.raises(ValueError, match="divide evenly"):
        ResumableSampler(dataset, 2, 0, seed=0).set_epoch(0, 3)


def test_validation_shares_cover_every_held_out_sequence_once():
    cfg = parse_config(TINY + ["--num_val", "7", "--batch_size", "2"])
    datasets = train_script.make_data(cfg, DistInfo(0, 0, 1, torch.device("cpu")))[1]
    shares = [train_script.make_loaders(cfg, DistInfo(rank, rank, 3, torch.device("cpu")), datasets)[2].dataset.indices
              for rank in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(7))


def test_prediction_grid_rows_are_prediction_truth_and_error():
    x, y, y_hat = torch.rand(10, 1, 4, 5), torch.rand(10, 1, 4, 5), torch.rand(10, 1, 4, 5)
    grid = prediction_grid(x, y, y_hat, padding=2)
    assert grid.shape == (1, 3 * 6 + 2, 20 * 7 + 2)

    def frame(row, k):
        top, left = 2 + row * 6, 2 + k * 7
        return grid[:, top:top + 4, left:left + 5]

    assert torch.equal(frame(0, 3), x[3]) and torch.equal(frame(0, 12), y_hat[2])
    assert torch.equal(frame(1, 3), x[3]) and torch.equal(frame(1, 12), y[2])
    assert torch.equal(frame(2, 3), torch.zeros(1, 4, 5)) and torch.allclose(frame(2, 12), (y_hat[2] - y[2]) ** 2)
    assert grid[:, :2].abs().sum() == 0  # padding


def test_to_btchw_is_the_permute_of_the_model_output_and_predict_returns_the_targets_layout():
    model = model_from_config(dict(n_hidden_dim=3, in_chan=1, kernel_size=3, peephole=False, backend="torch"))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 1, 7, 5), future_seq=4)  # (B, C, T_out, H, W)
        assert out.shape == (2, 1, 4, 7, 5)
        assert torch.equal(to_btchw(out), out.permute(0, 2, 1, 3, 4))
        assert to_btchw(out).shape == (2, 4, 1, 7, 5)
        bf16 = Precision("bf16", torch.device("cpu"))
        _, y, y_hat = train_script.predict(model, torch.rand(2, 20, 1, 7, 5), parse_config(TINY), bf16)
    assert y_hat.shape == y.shape == (2, 10, 1, 7, 5) and y_hat.dtype == torch.float32


def test_process_group_is_destroyed_when_training_raises(monkeypatch):
    single_process_group(monkeypatch)
    with pytest.raises(KeyError):
        with distributed("cpu") as info:
            assert torch.distributed.is_initialized() and info.world_size == 1
            raise KeyError("boom")
    assert not torch.distributed.is_initialized()


def test_the_log_speaks_early_and_by_time(tmp_path, monkeypatch):
    """Reports after steps 1 and 10 and every --log_every, and a progress line (rate, ETA) once PROGRESS_SECONDS
    pass without a line: a log in a file is never silent for long."""
    import convlstm.training.logs as logs
    monkeypatch.setattr(logs, "PROGRESS_SECONDS", 0.0)
    assert run(tmp_path / "run", "--max_steps", "12", "--log_every", "50") == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert re.findall(r"step (\d+)/12 epoch \d+ loss", log) == ["1", "10", "12"]
    running = re.findall(r"step (\d+)/12 epoch \d+ running: rank 0's loss [\d.]+ over its last \d+ steps, [\d.]+ "
                         r"sequences/s ETA", log)
    assert running == [str(step) for step in range(2, 12) if step != 10]
