"""evaluate.py end to end: outputs, numbers recomputed independently, torchrun sharding, every bad-input path."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlstm.data import MovingMNIST
from convlstm.evaluation import plots
from convlstm.evaluation.metrics import METRIC_NAMES, frame_metrics
from convlstm.model import EncoderDecoderConvLSTM
from helpers import load_script, unwritable_output

EVALUATE = Path(__file__).resolve().parents[1] / "evaluate.py"
TIMEOUT = 180
TINY = dict(n_hidden_dim=3, image_size=16, n_steps_past=3, n_steps_ahead=4, kernel_size=3, peephole=False,
            in_chan=1, seed=0, backend="torch", data=None)  # train.py's config keys, a tiny model
RESULT_KEYS = {"num_sequences", *METRIC_NAMES, "per_frame", "baselines", "checkpoint", "checkpoint_step",
               "checkpoint_epoch", "data", "n_steps_past", "n_steps_ahead", "model_config", "device", "backend",
               "world_size", "seconds", "conventions"}


def tiny_model(config):
    torch.manual_seed(config["seed"])
    return EncoderDecoderConvLSTM(nf=config["n_hidden_dim"], in_chan=config["in_chan"],
                                  kernel_size=config["kernel_size"], peephole=config["peephole"])


def save_checkpoint(path, config=TINY, model=None):
    """A checkpoint in train.py's format: model state_dict, plain config dict, step, epoch."""
    model = tiny_model(config) if model is None else model
    torch.save({"model": model.state_dict(), "config": dict(config), "step": 7, "epoch": 1}, path)
    return path


def run_evaluate(*args, torchrun=0, cwd=None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(torchrun)] if torchrun else [sys.executable]
    return subprocess.run([*launcher, str(EVALUATE), *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd)


def load_evaluate_module():
    """evaluate.py's body (convlstm.cli.evaluate), to call main() in this process."""
    return load_script("evaluate.py")


def moving_squares_file(path, num=3, frames=20, size=64):
    """A small stand-in for mnist_test_seq.npy: uint8 (frames, num, size, size), a bright square moving right."""
    arr = np.zeros((frames, num, size, size), dtype=np.uint8)
    for n in range(num):
        for t in range(frames):
            x = (2 * t + 5 * n) % (size - 8)
            arr[t, n, 10 + 3 * n:18 + 3 * n, x:x + 8] = 200 + 20 * n
    np.save(path, arr)
    return arr


def assert_results_match(a, b, rel):
    for name in METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], rel=rel), name
        assert a["per_frame"][name] == pytest.approx(b["per_frame"][name], rel=rel), name
        for baseline in ("last_frame", "zeros"):
            assert a["baselines"][baseline][name] == pytest.approx(b["baselines"][baseline][name], rel=rel)


def test_cli_generated_split_writes_every_output(tmp_path):
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    proc = run_evaluate("--checkpoint", ckpt, "--out_dir", out, "--num_test", 3, "--batch_size", 2,
                        "--save_predictions", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "baseline: last_frame" in proc.stdout and "ssim_uint8" in proc.stdout

    results = json.loads((out / "metrics.json").read_text())
    assert set(results) == RESULT_KEYS
    assert results["num_sequences"] == 3 and results["world_size"] == 1
    assert results["checkpoint"] == str(ckpt.resolve()) and results["checkpoint_step"] == 7
    assert results["data"]["source"] == "generated"
    assert "split='test'" in results["data"]["dataset"] and "seed=1000000" in results["data"]["dataset"]
    assert results["model_config"] == TINY and set(results["conventions"]) == set(METRIC_NAMES)
    assert set(results["baselines"]) == {"last_frame", "zeros"}
    for block in (results, *results["baselines"].values()):
        assert set(block["per_frame"]) == set(METRIC_NAMES)
        assert all(len(block["per_frame"][name]) == TINY["n_steps_ahead"] for name in METRIC_NAMES)
        assert block["num_sequences"] == 3

    # The outputs hold the model's predictions on the generated test split, and the numbers are theirs.
    saved = np.load(out / "predictions.npz")
    assert set(saved.files) == {"pred", "target"}
    assert saved["pred"].dtype == np.float32 and saved["pred"].shape == (3, 4, 1, 16, 16)
    assert saved["target"].dtype == np.float32 and saved["target"].shape == (3, 4, 1, 16, 16)
    # The generated split is the test split of seed 1000000, apart from train.py's validation (seed --seed).
    data = torch.stack(list(MovingMNIST(split="test", num_sequences=3, seq_len=7, image_size=16, seed=1_000_000)))
    x, y = data[:, :3], data[:, 3:]
    with torch.no_grad():
        pred = tiny_model(TINY)(x, future_seq=4).permute(0, 2, 1, 3, 4)
    np.testing.assert_allclose(saved["pred"], pred.numpy(), atol=1e-6)
    np.testing.assert_array_equal(saved["target"], y.numpy())
    expected = frame_metrics(pred, y)
    for name in METRIC_NAMES:
        assert results[name] == pytest.approx(expected[name].mean().item(), rel=1e-5), name
        assert results["per_frame"][name] == pytest.approx(expected[name].mean(0).tolist(), rel=1e-5), name
    # Baselines straight from their definitions.
    zeros_mse = (y.double() ** 2).sum(dim=(2, 3, 4)).mean(0)
    last_mae = (x[:, -1:].double() - y.double()).abs().sum(dim=(2, 3, 4)).mean(0)
    assert results["baselines"]["zeros"]["per_frame"]["mse"] == pytest.approx(zeros_mse.tolist(), rel=1e-6)
    assert results["baselines"]["last_frame"]["per_frame"]["mae"] == pytest.approx(last_mae.tolist(), rel=1e-6)

    for name in ("per_frame.png", "samples.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    with Image.open(out / "samples.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 7  # every frame of the sequence


def test_cli_standard_file(tmp_path):
    arr = moving_squares_file(tmp_path / "mnist_test_seq.npy")
    config = dict(TINY, n_hidden_dim=2, image_size=64, n_steps_past=10, n_steps_ahead=10)
    ckpt = save_checkpoint(tmp_path / "c.pt", config)
    proc = run_evaluate("--checkpoint", ckpt, "--out_dir", tmp_path / "e", "--data", tmp_path / "mnist_test_seq.npy",
                        "--save_predictions", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert results["data"] == {"source": "file", "path": str(tmp_path / "mnist_test_seq.npy"), "windows": 3}
    assert results["num_sequences"] == 3
    target = arr[10:].transpose(1, 0, 2, 3)[:, :, None].astype(np.float64) / 255  # (N, 10, 1, 64, 64)
    np.testing.assert_allclose(np.load(tmp_path / "e" / "predictions.npz")["target"], target, atol=1e-7)
    zeros_mse = (target ** 2).sum(axis=(2, 3, 4)).mean(0)
    assert results["baselines"]["zeros"]["per_frame"]["mse"] == pytest.approx(zeros_mse.tolist(), rel=1e-6)
    last_input = arr[9].astype(np.float64)[None] / 255  # (1, N, 64, 64)
    last_mae = np.abs(arr[10:].astype(np.float64) / 255 - last_input).sum(axis=(2, 3)).mean(1)  # per frame
    assert results["baselines"]["last_frame"]["per_frame"]["mae"] == pytest.approx(last_mae.tolist(), rel=1e-6)

    load_evaluate_module().main(["--checkpoint", str(ckpt), "--out_dir", str(tmp_path / "f"), "--data",
                                 str(tmp_path / "mnist_test_seq.npy"), "--num_test", "2", "--device", "cpu"])
    first_two = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert first_two["num_sequences"] == 2
    assert first_two["baselines"]["zeros"]["per_frame"]["mse"] == pytest.approx(
        (target[:2] ** 2).sum(axis=(2, 3, 4)).mean(0).tolist(), rel=1e-6)


def test_torchrun_two_ranks_count_each_sequence_once(tmp_path):
    """5 sequences over 2 ranks (3 + 2): the same numbers and predictions as one process, nothing duplicated."""
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    common = ["--checkpoint", ckpt, "--num_test", 5, "--batch_size", 2, "--device", "cpu", "--save_predictions"]
    load_evaluate_module().main([*map(str, common), "--out_dir", str(tmp_path / "one")])  # one process
    double = run_evaluate(*common, "--out_dir", tmp_path / "two", torchrun=2)
    assert double.returncode == 0, double.stderr + double.stdout
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_sequences"] == two["num_sequences"] == 5
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert_results_match(one, two, rel=1e-6)
    pred_one, pred_two = np.load(tmp_path / "one" / "predictions.npz"), np.load(tmp_path / "two" / "predictions.npz")
    assert pred_two["pred"].shape == (5, 4, 1, 16, 16)
    np.testing.assert_allclose(pred_two["pred"], pred_one["pred"], atol=1e-6)
    np.testing.assert_array_equal(pred_two["target"], pred_one["target"])


def test_overwrite_replaces_results_and_drops_stale_predictions(tmp_path, capsys):
    evaluate = load_evaluate_module()
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    base = ["--checkpoint", str(ckpt), "--out_dir", str(out), "--num_test", "2", "--device", "cpu"]
    evaluate.main([*base, "--save_predictions"])
    assert (out / "predictions.npz").exists()
    with pytest.raises(SystemExit) as refused:
        evaluate.main(base)
    assert refused.value.code == 1  # an error, as train.py and predict.py: not a bad flag
    assert "already holds results" in capsys.readouterr().err
    (out / "metrics.json").write_text("{}")
    evaluate.main([*base, "--overwrite"])
    assert json.loads((out / "metrics.json").read_text())["num_sequences"] == 2
    assert not (out / "predictions.npz").exists()  # it belonged to the previous results


# ---- bad input: one line "evaluate.py: error: ...", exit code 2, no traceback ----------------------------------------

class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling calls os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def make_bad_case(case, d):
    """Files for one bad-input case in directory d; returns the arguments of the run and the message expected."""
    good = save_checkpoint(d / "good.pt")
    out = ["--out_dir", d / "out", "--device", "cpu"]
    if case == "missing_checkpoint":
        return ["--checkpoint", d / "nope.pt", *out], f"checkpoint {d / 'nope.pt'} does not exist"
    if case == "text_file_checkpoint":
        (d / "notes.pt").write_text("not a checkpoint\n")
        return ["--checkpoint", d / "notes.pt", *out], f"checkpoint {d / 'notes.pt'} is unreadable (UnpicklingError"
    if case == "bare_tensor_checkpoint":
        torch.save(torch.zeros(3), d / "t.pt")
        return ["--checkpoint", d / "t.pt", *out], "t.pt is not a checkpoint of EncoderDecoderConvLSTM or " \
                                                   "OpenSTLConvLSTM: expected a train.py checkpoint"
    if case == "config_lacks_keys":
        config = {k: v for k, v in TINY.items() if k not in ("n_hidden_dim", "kernel_size")}
        torch.save({"model": tiny_model(TINY).state_dict(), "config": config}, d / "c.pt")
        return ["--checkpoint", d / "c.pt", *out], "its config lacks n_hidden_dim, kernel_size"
    if case == "weights_do_not_match_config":
        save_checkpoint(d / "c.pt", dict(TINY, n_hidden_dim=5), model=tiny_model(TINY))
        return ["--checkpoint", d / "c.pt", *out], "weights do not fit the model: encoder_1_convlstm.conv.weight " \
                                                   "is (12, 4, 3, 3), the model's is (20, 6, 3, 3)"
    if case == "model_not_a_state_dict":
        torch.save({"model": {"encoder_1_convlstm.conv.weight": [1.0]}, "config": TINY}, d / "c.pt")
        return ["--checkpoint", d / "c.pt", *out], "'model' is not a state_dict"
    if case == "malicious_pickle":
        torch.save({"model": RunsCodeWhenUnpickled(str(d / "pwned")), "config": TINY}, d / "evil.pt")
        return ["--checkpoint", d / "evil.pt", *out], "refusing checkpoint"
    if case == "data_wrong_shape":  # the checkpoint predicts 16x16 frames
        np.save(d / "bad.npy", np.zeros((20, 2, 32, 32), dtype=np.uint8))
        return ["--checkpoint", good, "--data", d / "bad.npy", *out], "has frames of 32x32 but the checkpoint was " \
                                                                      "trained on 16x16 (H x W): pass --resize 16x16"
    if case == "data_missing":
        return ["--checkpoint", good, "--data", d / "none.npy", *out], f"{d / 'none.npy'} does not exist"
    if case == "data_does_not_fit_checkpoint":  # sequences of 5 frames, where the checkpoint needs 3 + 4
        moving_squares_file(d / "m.npy", num=1, frames=5, size=16)
        return ["--checkpoint", good, "--data", d / "m.npy", "--layout", "TNHW", *out], \
            "has 5 frames, shorter than one window of 7"
    if case == "num_test_beyond_file":
        moving_squares_file(d / "m.npy", num=2)
        bigger = save_checkpoint(d / "big.pt", dict(TINY, image_size=64, n_steps_past=10, n_steps_ahead=10))
        return ["--checkpoint", bigger, "--data", d / "m.npy", "--num_test", 3, *out], "holds only 2 sequences"
    if case == "num_test_zero":
        return ["--checkpoint", good, "--num_test", 0, *out], "--num_test must be at least 1, got 0"
    if case == "batch_size_zero":
        return ["--checkpoint", good, "--batch_size", 0, *out], "--batch_size must be at least 1, got 0"
    if case == "cuda_without_gpu":
        return ["--checkpoint", good, "--out_dir", d / "out", "--device", "cuda"], "CUDA is not available"
    if case == "trained_on_the_test_seed":
        clash = save_checkpoint(d / "s.pt", dict(TINY, seed=1_000_000, num_val=100))
        return ["--checkpoint", clash, *out], "was trained with seed 1000000 and validated on"
    if case == "existing_results":
        (d / "out").mkdir()
        (d / "out" / "metrics.json").write_text("{}")
        return ["--checkpoint", good, *out], "already holds results (metrics.json); pass --overwrite"
    raise AssertionError(case)


# Run as real processes (exit code and stderr of the interpreter); the bad inputs, in parallel.
SUBPROCESS_CASES = ["missing_checkpoint", "text_file_checkpoint", "weights_do_not_match_config", "malicious_pickle",
                    "data_wrong_shape", "num_test_zero"]
# The other bad paths go through the same main() in this process (same exit code and stderr), to keep the suite fast.
IN_PROCESS_CASES = ["existing_results", "bare_tensor_checkpoint", "config_lacks_keys", "model_not_a_state_dict",
                    "data_missing", "data_does_not_fit_checkpoint", "num_test_beyond_file", "batch_size_zero",
                    "trained_on_the_test_seed",
                    pytest.param("cuda_without_gpu", marks=pytest.mark.skipif(
                        torch.cuda.is_available(), reason="this machine has CUDA"))]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """SUBPROCESS_CASES run at once (independent processes): {case: (CompletedProcess, expected, dir)}."""
    started = {}
    for case in SUBPROCESS_CASES:
        d = tmp_path_factory.mktemp(case)
        args, expected = make_bad_case(case, d)
        proc = subprocess.Popen([sys.executable, str(EVALUATE), *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        started[case] = (proc, expected, d)
    runs = {}
    for case, (proc, expected, d) in started.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        runs[case] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), expected, d)
    return runs


def assert_one_error_line(returncode, stderr, expected, code=2):
    assert returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("evaluate.py: error: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_process_exits_with_one_error_line(bad_runs, case):
    proc, expected, d = bad_runs[case]
    assert_one_error_line(proc.returncode, proc.stderr, expected)
    assert "Traceback" not in proc.stderr
    assert not (d / "out" / "per_frame.png").exists()


@pytest.mark.parametrize("case", IN_PROCESS_CASES)
def test_bad_input_main_exits_with_one_error_line(case, tmp_path, capsys):
    evaluate = load_evaluate_module()
    args, expected = make_bad_case(case, tmp_path)
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(a) for a in args])
    assert_one_error_line(exited.value.code, capsys.readouterr().err, expected,
                          code=1 if case == "existing_results" else 2)
    assert not (tmp_path / "out" / "per_frame.png").exists()


def test_malicious_pickle_would_run_code_but_is_refused(bad_runs, tmp_path):
    proc, _, d = bad_runs["malicious_pickle"]
    assert "GLOBAL posix.mkdir" in proc.stderr
    assert not (d / "pwned").exists()  # evaluate.py never executed the payload
    # The payload is real: an unrestricted unpickle runs it (here, in a scratch copy).
    marker = tmp_path / "pwned"
    torch.save({"model": RunsCodeWhenUnpickled(str(marker)), "config": TINY}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.is_dir()


def test_tutorial_lightning_checkpoint_is_evaluated_with_the_tutorials_configuration(tmp_path, capsys):
    """The tutorial's training script saves {"state_dict": {"model.<key>": ...}}: evaluate.py scores it as the
    tutorial ran it (10 in, 10 out, 64x64) instead of refusing it; a bare state_dict alike."""
    model = tiny_model(dict(TINY, n_hidden_dim=2))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "tutorial.ckpt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    for name in ("tutorial.ckpt", "bare.pt"):
        load_evaluate_module().main(["--checkpoint", str(tmp_path / name), "--out_dir", str(tmp_path / name[:4]),
                                     "--num_test", "2", "--device", "cpu", "--backend", "torch"])
        results = json.loads((tmp_path / name[:4] / "metrics.json").read_text())
        assert results["num_sequences"] == 2 and results["n_steps_ahead"] == 10
        assert results["model_config"]["n_hidden_dim"] == 2
    assert json.loads((tmp_path / "tuto" / "metrics.json").read_text())["mse"] == pytest.approx(results["mse"])


# ---- an --out_dir that cannot be written: one line before any compute; a full disk: nothing half-written ------------

def fail_if_called(*args, **kwargs):
    raise AssertionError("computed before --out_dir was checked")


@pytest.mark.parametrize("case", ["under_a_file", "in_proc", "read_only"])
def test_unwritable_out_dir_is_one_line_before_any_compute(case, tmp_path, monkeypatch, capsys):
    evaluate = load_evaluate_module()
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    out, expected = unwritable_output(case, tmp_path, monkeypatch, "--out_dir", "eval")
    monkeypatch.delenv("RANK", raising=False)  # one process: rank 0, which checks
    for name in ("open_model", "build_dataset", "evaluate_shard"):
        monkeypatch.setattr(evaluate, name, fail_if_called)
    with pytest.raises(SystemExit) as exited:
        evaluate.main(["--checkpoint", str(ckpt), "--out_dir", str(out), "--num_test", "2", "--device", "cpu"])
    error = capsys.readouterr().err
    assert_one_error_line(exited.value.code, error, expected)
    assert "Traceback" not in error
    assert not out.exists() or list(out.iterdir()) == []


def tree(folder):
    """{relative path: bytes} of every file under folder, hidden ones (a staging folder) included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_leaves_no_partial_file_and_an_earlier_run_as_it_was(tmp_path, monkeypatch, capsys):
    evaluate = load_evaluate_module()
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    args = ["--checkpoint", str(ckpt), "--out_dir", str(out), "--num_test", "2", "--device", "cpu"]

    def no_space(*args, **kwargs):  # after metrics.json and both plots
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(plots, "save_gif", no_space)
        with pytest.raises(SystemExit) as exited:
            evaluate.main(args)
    assert_one_error_line(exited.value.code, capsys.readouterr().err, f"no space left writing {out / 'samples.gif'}")
    assert tree(out) == {}  # no metrics.json, nothing staged

    evaluate.main([*args, "--save_predictions"])
    earlier = tree(out)
    assert "predictions.npz" in earlier
    monkeypatch.setattr(plots, "save_gif", no_space)
    with pytest.raises(SystemExit) as exited:  # without --save_predictions: the old npz goes only with a new set
        evaluate.main([*args, "--num_test", "1", "--overwrite"])
    assert_one_error_line(exited.value.code, capsys.readouterr().err, "no space left writing ")
    assert tree(out) == earlier
