"""Issue 25, an attack round as a careless or hostile user: bad data found mid-run, outputs that cannot be written,
absurd sizes, files the run does not own. Each group ends in one line naming the file or flag and the value, a
non-zero exit, nothing of the user's lost or overwritten; each test here failed before its fix (evaluate.py's and
predict.py's unwritable outputs are in their own test files, the sweep of temp files in test_reliability.py).

Runs are in-process on test_train's tiny configuration (helpers.TINY: n_hidden_dim 4, 16x16 frames, CPU).
"""
import json
import os
import signal
import threading
import zipfile

import av
import numpy as np
import pytest
import torch
from PIL import Image

from convlstm import checkpoint
from helpers import TINY, load_script, run, train_script

evaluate_script = load_script("evaluate.py")
predict_script = load_script("predict.py")


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if ": error: " in line]


def one_error(capsys, script, *expected):
    """The one error line of `script`, holding each of `expected`."""
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), lines
    assert all(text in lines[0] for text in expected), lines[0]
    return lines[0]


def evaluate(*argv):
    try:
        evaluate_script.main([str(a) for a in argv])
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def predict(*argv):
    return predict_script.main([str(a) for a in argv])


def clips(count=8, seed=0):
    """float32 (count, 20, 1, 16, 16) in [0, 1]."""
    return np.random.default_rng(seed).random((count, 20, 1, 16, 16), dtype=np.float32)


def frame_folders(root, count=8, frames=20):
    """count folders seq_0 ... of `frames` grey 16x16 PNGs."""
    pixels = (clips(count)[:, :frames, 0] * 255).astype(np.uint8)
    for i, sequence in enumerate(pixels):
        os.makedirs(root / f"seq_{i}")
        for t, frame in enumerate(sequence):
            Image.fromarray(frame).save(root / f"seq_{i}" / f"{t}.png")
    return root


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained on 16x16 grey frames (evaluate.py and predict.py read it)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert run(run_dir, "--max_steps", 2) == 0
    return run_dir / "checkpoints" / "latest.pt"


# 1. Bad values: what is cheap to check is checked before anything is written; what is found only on read stops
# the run in one line naming the file and sequence; --skip_bad_data leaves them out at a scan before training.

@pytest.mark.parametrize("bad, expected", [
    ("nan", "sequence 5 has 1 NaN"), ("inf", "sequence 5 has 1 inf"),
    ("0-255", "sequence 5 has float values in [")])
def test_bad_values_in_a_later_sequence_of_an_array_stop_before_anything_is_written(tmp_path, capsys, bad, expected):
    data = clips()
    data[5, 7, 0, 3, 3] = {"nan": np.nan, "inf": np.inf, "0-255": 200.0}[bad]
    np.save(tmp_path / "it.npy", data)
    assert run(tmp_path / "run", "--data", tmp_path / "it.npy", "--max_steps", 2) == 1
    one_error(capsys, "train.py", "it.npy", expected, "--skip_bad_data")
    assert not (tmp_path / "run").exists()

    assert run(tmp_path / "run", "--data", tmp_path / "it.npy", "--max_steps", 2, "--skip_bad_data") == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "1 bad sequence(s) left out by --skip_bad_data" in log and expected in log


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_png_found_mid_run_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, capsys, workers):
    data = frame_folders(tmp_path / "frames")
    truncate(data / "seq_3" / "15.png")
    run_dir = tmp_path / "run"
    assert run(run_dir, "--data", data, "--max_steps", 8, "--num_workers", workers) == 1
    line = one_error(capsys, "train.py", str(data / "seq_3" / "15.png"), "not a readable image", "stopped after step")
    step = int(line.split("stopped after step ")[1].split(",")[0])
    assert step < 8 and (run_dir / "config.json").exists()
    if step:  # the steps before it were saved
        assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == step
    assert line.split("train.py: error: ")[1] in (run_dir / "train.log").read_text()

    assert run(tmp_path / "skipped", "--data", data, "--max_steps", 2, "--skip_bad_data",
               "--num_workers", workers) == 0
    assert "left out by --skip_bad_data: " + str(data / "seq_3" / "15.png") in \
        (tmp_path / "skipped" / "train.log").read_text()


def write_video(path, frames=40):
    pixels = (np.random.default_rng(1).random((frames, 16, 16, 3)) * 255).astype(np.uint8)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # the header first: it survives
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_a_video_shorter_than_its_header_stops_mid_run_or_is_left_out(tmp_path, capsys):
    os.makedirs(tmp_path / "videos")
    for i in range(4):
        write_video(tmp_path / "videos" / f"{i}.mp4")
    truncate(tmp_path / "videos" / "1.mp4")  # its header still says 40 frames; 2.mp4 is held out, 0.mp4 read first
    flags = ["--data", tmp_path / "videos", "--channels", 1, "--val_fraction", 0.25, "--batch_size", 2,
             "--max_steps", 6]
    assert run(tmp_path / "run", *flags) == 1
    one_error(capsys, "train.py", str(tmp_path / "videos" / "1.mp4"), "video decoding failed", "stopped after step")
    assert run(tmp_path / "skipped", *flags, "--skip_bad_data", "--max_steps", 2) == 0
    assert "left out by --skip_bad_data: " + str(tmp_path / "videos" / "1.mp4") in \
        (tmp_path / "skipped" / "train.log").read_text()


def test_evaluate_stops_in_one_line_on_a_frame_found_bad_mid_run_or_skips_it(tmp_path, capsys, trained):
    data = frame_folders(tmp_path / "frames", count=3)
    truncate(data / "seq_2" / "4.png")
    out = tmp_path / "eval"
    assert evaluate("--checkpoint", trained, "--data", data, "--out_dir", out, "--device", "cpu",
                    "--batch_size", 1) == 2
    one_error(capsys, "evaluate.py", str(data / "seq_2" / "4.png"), "not a readable image")
    assert not out.exists() or not os.listdir(out)
    assert evaluate("--checkpoint", trained, "--data", data, "--out_dir", out, "--device", "cpu",
                    "--skip_bad_data") == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["num_sequences"] == 2 and "seq_2" in results["data"]["skipped"][0]


# 2. Found on open, but a traceback before: a non-array .npz member, object dtype, a symlink loop; all three scripts.

def bad_inputs(root):
    with zipfile.ZipFile(root / "text.npz", "w") as archive:
        archive.writestr("notes.txt", "not an array")
    np.savez(root / "objects.npz", x=np.array([1, "a"], dtype=object))
    np.savez_compressed(root / "objects_compressed.npz", x=np.array([1, "a"], dtype=object))
    os.makedirs(root / "loop" / "seq_0")
    os.symlink("b", root / "loop" / "a")
    os.symlink("a", root / "loop" / "b")
    return {"text.npz": "its member 'notes.txt' is not an .npy array",
            "objects.npz": "holds Python objects", "objects_compressed.npz": "Object arrays cannot be loaded",
            "loop": "Too many levels of symbolic links"}


def test_unusable_inputs_found_on_open_are_one_line_in_all_three_scripts(tmp_path, capsys, trained):
    for name, expected in bad_inputs(tmp_path).items():
        assert run(tmp_path / "run", "--data", tmp_path / name) == 1, name
        one_error(capsys, "train.py", expected)
        assert evaluate("--checkpoint", trained, "--data", tmp_path / name, "--out_dir", tmp_path / "eval") == 2
        one_error(capsys, "evaluate.py", expected)
        assert predict("--checkpoint", trained, "--input", tmp_path / name, "--out", tmp_path / "pred") == 1
        one_error(capsys, "predict.py", expected)
        assert not any((tmp_path / folder).exists() for folder in ("run", "eval", "pred"))


# 3. Frames smaller than SSIM's 7x7 window: refused before anything is written, not at the first validation.

def test_frames_smaller_than_the_ssim_window_are_refused_before_anything_is_written(tmp_path, capsys):
    np.save(tmp_path / "small.npy", clips()[..., :5, :6])
    assert run(tmp_path / "run", "--data", tmp_path / "small.npy") == 1
    one_error(capsys, "train.py", "small.npy has frames of 5x6, smaller than the 7x7 window", "--resize")
    assert not (tmp_path / "run").exists()


# 5. A partly unwritable run_dir: one line before the first step, not a PermissionError traceback mid-run.

def make_immutable(path):
    """chattr +i (root cannot write it either); skips where the file system or the container refuses it."""
    if os.system(f"chattr +i '{path}' 2>/dev/null") != 0:
        pytest.skip("chattr +i is not permitted here")


@pytest.mark.parametrize("name", ["train.log", "tensorboard", "predictions.png"])
def test_an_unwritable_file_of_the_run_dir_is_one_line_before_the_first_step(tmp_path, capsys, name):
    run_dir = tmp_path / "run"
    assert run(run_dir, "--max_steps", 2, "--image_every", 1) == 0
    before = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"]
    capsys.readouterr()
    make_immutable(run_dir / name)
    try:
        assert run(run_dir, "--max_steps", 4, "--image_every", 1, "--resume") == 1
    finally:
        os.system(f"chattr -i '{run_dir / name}'")
    one_error(capsys, "train.py", str(run_dir / name), "Operation not permitted")
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == before


def test_a_picture_that_cannot_be_written_mid_run_is_a_warning_not_a_lost_step(tmp_path, capsys, monkeypatch):
    from convlstm.training import logs

    def fails(grid, path, *labels):
        raise logs.WriteError(f"cannot write {path}: Operation not permitted")

    monkeypatch.setattr(logs, "save_picture", fails)
    assert run(tmp_path / "run", "--max_steps", 4, "--image_every", 1) == 0
    assert capsys.readouterr().err.count("predictions.png: Operation not permitted; training goes on") == 1


# 6. and 11. Files in checkpoints/ the run did not write: a folder named step_N.pt, a copied step file.

def test_a_folder_named_like_a_checkpoint_is_refused_at_the_start_and_never_pruned(tmp_path, capsys):
    run_dir, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    os.makedirs(ckpt / "step_1.pt")
    (ckpt / "step_1.pt" / "mine.txt").write_text("the user's")
    assert run(run_dir, "--max_steps", 4, "--checkpoint_every", 1, "--resume") == 1
    one_error(capsys, "train.py", f"cannot write {ckpt / 'step_1.pt'}: Is a directory")
    assert os.listdir(ckpt) == ["step_1.pt"]
    # One that appears mid-run is passed over by the pruning, which removed it (or crashed) before.
    for step in (2, 3):
        checkpoint.save_checkpoint(str(ckpt), {**dict.fromkeys(checkpoint.TRAINING_KEYS), "step": step}, keep=1,
                                   is_best=False)
    assert sorted(os.listdir(ckpt)) == ["latest.pt", "step_1.pt", "step_3.pt"]
    assert (ckpt / "step_1.pt" / "mine.txt").read_text() == "the user's"


def test_resume_orders_checkpoints_by_the_step_they_hold_and_never_prunes_a_copied_one(tmp_path, capsys):
    run_dir, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert run(run_dir, "--max_steps", 4, "--checkpoint_every", 2) == 0
    (ckpt / "step_999.pt").write_bytes((ckpt / "step_2.pt").read_bytes())  # a copy of step 2 under a later name
    assert run(run_dir, "--max_steps", 6, "--checkpoint_every", 1, "--keep_checkpoints", 1, "--resume") == 0
    err = capsys.readouterr().err
    assert f"{ckpt / 'step_999.pt'} holds step 2, not the 999 its name says" in err and "resumed from step 4" in err
    assert sorted(os.listdir(ckpt)) == ["best.pt", "latest.pt", "step_6.pt", "step_999.pt"]
    assert checkpoint._held_step(str(ckpt / "step_999.pt")) == 2


# 7. Absurd sizes: refused in one line with the estimate and the memory available, before anything is written.

@pytest.mark.parametrize("flags, named", [
    (["--image_size", "100000"], "--image_size 100000"),
    (["--num_train", "1000000000000"], "--num_train 1000000000000"),
    (["--n_hidden_dim", "1000000000"], "--n_hidden_dim 1000000000"),
    (["--kernel_size", "99999"], "--kernel_size 99999"),
    (["--num_workers", "1000000000000"], "--num_workers 1000000000000"),
    (["--num_digits", "1000000000000"], "--num_digits 1000000000000"),
    (["--resize", "100000x100000", "--data", "it.npy"], "--resize 100000x100000")])
def test_absurd_sizes_are_refused_with_the_estimate_and_the_memory_available(tmp_path, capsys, monkeypatch, flags,
                                                                             named):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "it.npy", clips())
    assert run(tmp_path / "run", *flags) == 1
    line = one_error(capsys, "train.py", named, "a training step needs ", "of memory", "available on cpu")
    assert not (tmp_path / "run").exists(), line


def test_a_gpu_and_its_host_are_two_memory_budgets(monkeypatch):
    """The sampler's order lives on the host: 30 GiB of it fit a host of 64 GiB beside a GPU of 16 GiB."""
    from convlstm import budget
    from convlstm.training.config import parse_config, resolve_config

    cfg = resolve_config(parse_config(TINY + ["--num_train", str(2 * 10**9)]), "cpu", False)
    gib = {"cuda": 16 * 2**30, "cpu": 64 * 2**30}
    monkeypatch.setattr(budget, "available_bytes", lambda device: gib[device.type])
    train_script.check_memory(cfg, torch.device("cuda", 0), (1, 16, 16), 2 * 10**9)
    gib["cpu"] = 16 * 2**30
    with pytest.raises(train_script.TrainingError, match="--num_train 2000000000: a training step needs at least "
                                                         r"29.8 GiB .* more than the 16.0 GiB available on cpu"):
        train_script.check_memory(cfg, torch.device("cuda", 0), (1, 16, 16), 2 * 10**9)


def test_predicting_absurdly_many_frames_is_refused_before_the_compute(tmp_path, capsys, trained):
    np.save(tmp_path / "it.npy", clips(2))
    assert predict("--checkpoint", trained, "--input", tmp_path / "it.npy", "--out", tmp_path / "pred", "--n_out",
                   100_000_000, "--device", "cpu") == 1
    one_error(capsys, "predict.py", "--n_out 100000000 for 2 sequence(s) of 1x16x16", "available on cpu")
    assert not (tmp_path / "pred").exists()


# 7 (seed), 8 and 9: values refused when parsed, exit 2, before train.lock or train.log exist.

@pytest.mark.parametrize("flags, expected", [
    (["--seed", str(2**64)], "--seed 18446744073709551616: must be at most 9223372036854775807 (2^63 - 1)"),
    (["--n_hidden_dim", str(2**70)], "--n_hidden_dim 1180591620717411303424: must be at most 9223372036854775807"),
    (["--lr_schedule", "onecycle", "--lr", "0.5", "--onecycle_final_div", "1e-12"],
     "--onecycle_final_div 1e-12: ends onecycle at lr 2e+10"),
    (["--config", "latin1.json"], "not UTF-8 text (byte 0xe9 at offset 10)")])
def test_values_the_run_cannot_use_are_refused_when_parsed(tmp_path, capsys, monkeypatch, flags, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.json").write_bytes('{"data": "é.npy"}'.encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "run", *flags)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_every_lr_onecycle_reaches_is_within_the_bound(tmp_path):
    from convlstm.training.config import MAX_LR, parse_config
    from convlstm.training.schedule import build_scheduler

    cfg = parse_config(["--lr_schedule", "onecycle", "--lr", "0.5", "--onecycle_final_div", "0.02"])  # ends at 1.0
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler, lrs = build_scheduler(optimizer, cfg, total_steps=20), []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(lrs) <= MAX_LR + 1e-12 and lrs[-1] == pytest.approx(0.5 / 25 / 0.02)


# 12. Signals: the line after a second Ctrl-C reaches train.log; SIGTERM during the last step's validation is 143.

def test_sigterm_during_the_last_validation_exits_143_with_the_checkpoint(tmp_path, capsys, monkeypatch):
    validate = train_script.validate

    def validate_and_signal(*args, **kwargs):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # handled before validate goes on
        return validate(*args, **kwargs)

    monkeypatch.setattr(train_script, "validate", validate_and_signal)
    assert run(tmp_path / "run", "--max_steps", 6) == 143  # 6 steps: one epoch, validated once, at the last step
    assert "stopped by SIGTERM after step 6; checkpoint" in capsys.readouterr().err
    assert "the run is complete" in (tmp_path / "run" / "train.log").read_text()


def test_the_line_after_a_second_ctrl_c_is_in_train_log(tmp_path, capsys, monkeypatch):
    """The first Ctrl-C is noted; the second is the KeyboardInterrupt Python's default handler raises, raised here.
    Sending two SIGINTs instead depends on the disposition the process inherited: the fresh-clone CI check ran in the
    background, where a shell starts jobs with SIGINT ignored, and StopSignals puts back what it found (the second
    signal then does what it would without the handler: nothing). Reproduced here with SIG_IGN inherited."""
    def validate_interrupted_twice(*args, **kwargs):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_script, "validate", validate_interrupted_twice)
    assert run(tmp_path / "run", "--max_steps", 6) == 130
    assert "train.py: interrupted; nothing saved since the last checkpoint" in capsys.readouterr().err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING interrupted; nothing saved since the last checkpoint" in log
