"""convlstm.load_model (train.py, bare state_dict and the tutorial's Lightning checkpoints, weights_only) and
predict.py on an array and a video: its files, shapes and values; each bad input one line, exit 1, nothing written."""
import argparse
import dataclasses
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlstm import EncoderDecoderConvLSTM, load_model
from convlstm.checkpoint import CheckpointError
from convlstm.evaluation.plots import save_prediction_gif
from convlstm.model import model_from_config, to_btchw
from convlstm.config import Config
from helpers import load_script, unwritable_output

ROOT = Path(__file__).resolve().parents[1]
N_IN, N_OUT = 3, 2  # the train.py checkpoints'; the other kinds get the tutorial's 10 and 10


def load_predict():
    return load_script("predict.py")


predict = load_predict()


def train_checkpoint(path, frame_shape, seed=0):
    """What train.py writes, cut to what loading reads beside the optimizer's and the step's keys. frame_shape
    (C, H, W) of the training frames; None: a checkpoint from before own data, Moving MNIST frames of image_size."""
    config = dataclasses.asdict(Config(n_hidden_dim=4, in_chan=frame_shape[0] if frame_shape else 1, image_size=16,
                                       n_steps_past=N_IN, n_steps_ahead=N_OUT))
    torch.manual_seed(seed)
    model = model_from_config(config, backend="torch")
    state = {"model": model.state_dict(), "optimizer": {}, "step": 5, "config": config}
    torch.save(state if frame_shape is None else {**state, "frame_shape": list(frame_shape)}, path)
    return model.state_dict()


def sequences(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def write_video(path, frames, fps=10):
    """frames uint8 (T, H, W, 3) -> an H.264 .mp4 (as tests/test_own_data.py writes them)."""
    av = pytest.importorskip("av", reason="PyAV is the optional video extra (pip install -e '.[video]')")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def gif_frames(path):
    with Image.open(path) as image:
        return image.n_frames


def test_load_model_gives_the_same_model_from_each_kind(tmp_path):
    weights = train_checkpoint(tmp_path / "train.pt", frame_shape=None)
    torch.save(weights, tmp_path / "bare.pt")
    torch.save({"state_dict": {"model." + k: v for k, v in weights.items()}, "epoch": 3, "global_step": 9},
               tmp_path / "tutorial.ckpt")
    x = torch.rand(2, N_IN, 1, 7, 5)  # odd sizes: the model is convolutional
    outputs = {}
    for name, kind, n_in in [("train.pt", "train.py", N_IN), ("bare.pt", "state_dict", 10),
                             ("tutorial.ckpt", "lightning", 10)]:
        model = load_model(tmp_path / name)
        assert not any(module.training for module in model.modules())
        assert (model.info.kind, model.info.n_in, model.info.in_chan, model.info.out_chan) == (kind, n_in, 1, 1)
        assert model.info.n_out == (N_OUT if kind == "train.py" else 10)
        assert model.info.frame_size == ((16, 16) if kind == "train.py" else None)  # the config's image_size
        with torch.no_grad():
            outputs[name] = to_btchw(model(x, future_seq=4))
    assert outputs["train.pt"].shape == (2, 4, 1, 7, 5)
    assert torch.equal(outputs["train.pt"], outputs["bare.pt"]) and torch.equal(outputs["bare.pt"],
                                                                               outputs["tutorial.ckpt"])


def test_load_model_infers_the_sizes_of_a_state_dict(tmp_path):
    torch.manual_seed(0)
    original = EncoderDecoderConvLSTM(nf=3, in_chan=2, kernel_size=5, peephole=True, out_chan=2, backend="torch")
    with torch.no_grad():
        original.encoder_1_convlstm.w_ci.fill_(0.3)  # peephole weights start at zero: make them count
    torch.save({"module." + k: v for k, v in original.state_dict().items()}, tmp_path / "dp.pt")
    model = load_model(tmp_path / "dp.pt")
    assert model.encoder_1_convlstm.kernel_size == (5, 5) and model.encoder_1_convlstm.peephole
    assert (model.info.in_chan, model.info.out_chan) == (2, 2)
    x = torch.rand(1, 4, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x, future_seq=2), original.eval()(x, future_seq=2), rtol=0, atol=0)


class RunsCodeWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("case", ["missing", "pickled_class", "code_in_pickle", "foreign_dict", "tensor",
                                  "missing_key", "config_mismatch", "backend"])
def test_load_model_bad_checkpoint_is_one_line(tmp_path, case):
    path = tmp_path / "ckpt.pt"
    weights = train_checkpoint(path, frame_shape=(1, 6, 6))
    if case == "missing":
        path, match = tmp_path / "nowhere.pt", "nowhere.pt does not exist"
    elif case == "pickled_class":  # e.g. Lightning's hyper-parameters as a Namespace: weights_only refuses it
        torch.save({"state_dict": weights, "hparams": argparse.Namespace(lr=1e-4)}, path)
        match = "refusing checkpoint .*ckpt.pt.*GLOBAL argparse.Namespace"
    elif case == "code_in_pickle":
        torch.save({"model": RunsCodeWhenUnpickled(str(tmp_path / "pwned")), "config": {}}, path)
        match = "refusing checkpoint .*ckpt.pt.*weights_only=True"
    elif case == "foreign_dict":
        torch.save({"weights": weights, "note": "mine"}, path)
        match = r"ckpt.pt is not a checkpoint of EncoderDecoderConvLSTM.*found \['note', 'weights'\]"
    elif case == "tensor":
        torch.save(torch.zeros(3), path)
        match = "ckpt.pt is not a checkpoint of EncoderDecoderConvLSTM.*found Tensor"
    elif case == "missing_key":
        torch.save({k: v for k, v in weights.items() if k != "decoder_CNN.bias"}, path)
        match = "ckpt.pt: weights do not fit the model: missing decoder_CNN.bias"
    elif case == "config_mismatch":
        state = torch.load(path, weights_only=True)
        state["config"]["n_hidden_dim"] = 5
        torch.save(state, path)
        match = r"ckpt.pt: weights do not fit the model: encoder_1_convlstm.conv.weight is \(16, 5, 3, 3\)"
    else:
        match = "cannot load .*ckpt.pt with backend 'nonsense'"
    with pytest.raises(CheckpointError, match=match) as caught:
        load_model(path, backend="nonsense" if case == "backend" else None)
    assert "\n" not in str(caught.value) and not (tmp_path / "pwned").exists()


def run_predict(*args):
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def check_outputs(out, n, n_in, n_out, frame_shape, out_chan=None):
    predictions, inputs = np.load(out / "predictions.npy"), np.load(out / "inputs.npy")
    assert predictions.dtype == inputs.dtype == np.float32 and inputs.shape == (n, n_in, *frame_shape)
    assert predictions.shape == (n, n_out, out_chan or frame_shape[0], *frame_shape[1:])
    assert 0 <= predictions.min() and predictions.max() <= 1
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["n_in"], summary["n_out"]) == (n_in, n_out)
    assert summary["predictions"] == list(predictions.shape)
    assert len(summary["sequences"]) == n
    for sequence in summary["sequences"]:
        assert gif_frames(out / sequence["gif"]) == n_in + n_out
        with Image.open(out / sequence["strip"]) as strip:
            assert strip.height == frame_shape[1] and strip.width > (n_in + n_out) * frame_shape[2]
    return summary, inputs, predictions


def test_predict_on_an_array(tmp_path):
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 6, 10))
    data = sequences((3, 7, 6, 10))  # (N, T, H, W): both axes hold n_in = 3 frames, so --layout says which is T
    np.save(tmp_path / "data.npy", data)
    result = run_predict("--checkpoint", tmp_path / "ckpt.pt", "--input", tmp_path / "data.npy", "--layout", "NTHW",
                         "--out", tmp_path / "out", "--batch_size", 2)
    assert result.returncode == 0, result.stderr
    summary, inputs, predictions = check_outputs(tmp_path / "out", 3, N_IN, N_OUT, (1, 6, 10))
    np.testing.assert_array_equal(inputs[:, :, 0], data[:, -N_IN:] / np.float32(255))  # the LAST n_in frames
    assert [s["name"] for s in summary["sequences"]] == ["data.npy[0]", "data.npy[1]", "data.npy[2]"]
    model = load_model(tmp_path / "ckpt.pt")
    with torch.no_grad():
        expected = to_btchw(model(torch.from_numpy(inputs), future_seq=N_OUT))
    torch.testing.assert_close(torch.from_numpy(predictions), expected)


def test_predict_on_a_video_grey_resized(tmp_path):
    weights = train_checkpoint(tmp_path / "unused.pt", frame_shape=(1, 16, 16))
    torch.save({"state_dict": {"model." + k: v for k, v in weights.items()}}, tmp_path / "tutorial.ckpt")
    write_video(tmp_path / "walk.mp4", sequences((12, 16, 24, 3)))
    result = run_predict("--checkpoint", tmp_path / "tutorial.ckpt", "--input", tmp_path / "walk.mp4",
                         "--channels", 1, "--resize", "8x12", "--n_out", 3, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    summary, _, _ = check_outputs(tmp_path / "out", 1, 10, 3, (1, 8, 12))
    assert summary["checkpoint_kind"] == "lightning"
    assert summary["sequences"][0]["gif"] == os.path.join("gifs", "0_walk.gif")  # not 0_walk.mp4.gif
    with Image.open(tmp_path / "out" / "gifs" / "0_walk.gif") as gif:  # 8x12 frames, enlarged to be seen
        assert gif.size[0] >= 256


@pytest.mark.parametrize("case", ["channels", "too_short", "missing_input", "out_not_empty", "missing_checkpoint"])
def test_bad_input_is_one_line_exit_1_and_nothing_written(tmp_path, case, capsys):
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 6, 6))
    np.save(tmp_path / "grey.npy", sequences((2, 5, 1, 6, 6)))
    checkpoint, data, out = tmp_path / "ckpt.pt", tmp_path / "grey.npy", tmp_path / "out"
    if case == "channels":
        np.save(data, sequences((2, 5, 6, 6, 3)))
        match, extra = "grey.npy has frames of 3 channel.*the checkpoint's model reads 1", ["--layout", "NTHWC"]
    elif case == "too_short":
        np.save(data, sequences((4, 2, 1, 6, 6)))
        match, extra = r"grey.npy\[0\] has 2 frames, fewer than the 3 the model reads.*4 sequence", []
    elif case == "missing_input":
        data, match, extra = tmp_path / "nowhere.mp4", "nowhere.mp4 does not exist", []
    elif case == "out_not_empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        match, extra = "--out .*out is not empty; pass --overwrite", []
    else:
        checkpoint, match, extra = tmp_path / "nowhere.pt", "nowhere.pt does not exist", []
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(data), "--out", str(out), *extra]) == 1
    error = capsys.readouterr().err
    assert error.startswith("predict.py: error: ") and error.count("\n") == 1
    assert re.search(match, error), error
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_exit_code_and_overwrite_from_the_command_line(tmp_path):
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 6, 6))
    np.save(tmp_path / "grey.npy", sequences((2, 5, 1, 6, 6)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    args = ["--checkpoint", tmp_path / "ckpt.pt", "--input", tmp_path / "grey.npy", "--out", tmp_path / "out"]
    refused = run_predict(*args)
    assert refused.returncode == 1 and refused.stderr.startswith("predict.py: error: --out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    assert predict.main([*map(str, args), "--overwrite"]) == 0
    check_outputs(tmp_path / "out", 2, N_IN, N_OUT, (1, 6, 6))


def test_predict_rgb_resized_to_the_training_frames(tmp_path):
    train_checkpoint(tmp_path / "rgb.pt", frame_shape=(3, 4, 4))
    np.save(tmp_path / "rgb.npy", sequences((2, 4, 6, 5, 3)))
    args = ["--checkpoint", tmp_path / "rgb.pt", "--input", tmp_path / "rgb.npy", "--layout", "NTHWC"]
    assert predict.main([*map(str, args), "--out", str(tmp_path / "out")]) == 0
    check_outputs(tmp_path / "out", 2, N_IN, N_OUT, (3, 4, 4), out_chan=load_model(tmp_path / "rgb.pt").info.out_chan)


def test_gif_keeps_every_frame_of_a_still_prediction(tmp_path):
    """Pillow merges identical consecutive GIF frames; the growing bar keeps them apart, even for frames narrower
    than the frame count."""
    inputs, still = np.random.default_rng(0).random((10, 1, 4, 3)), np.full((10, 1, 4, 3), 0.5)
    save_prediction_gif(inputs, still, tmp_path / "still.gif")
    assert gif_frames(tmp_path / "still.gif") == 20


def fail_if_called(*args, **kwargs):
    raise AssertionError("computed before --out was checked")


@pytest.mark.parametrize("case", ["under_a_file", "in_proc", "read_only"])
def test_unwritable_out_is_one_line_before_any_compute(tmp_path, case, monkeypatch, capsys):
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 6, 6))
    np.save(tmp_path / "grey.npy", sequences((2, 5, 1, 6, 6)))
    out, expected = unwritable_output(case, tmp_path, monkeypatch, "--out", "out")
    for name in ("load_model", "open_source", "forecast"):
        monkeypatch.setattr(predict, name, fail_if_called)
    args = ["--checkpoint", tmp_path / "ckpt.pt", "--input", tmp_path / "grey.npy", "--out", out]
    assert predict.main(list(map(str, args))) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"predict.py: error: {expected}"), error
    assert not out.exists() or list(out.iterdir()) == []


def tree(folder):
    """{relative path: bytes} of every file under folder, hidden ones (a staging folder) included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_leaves_no_partial_file_and_an_earlier_run_as_it_was(tmp_path, monkeypatch, capsys):
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 6, 6))
    np.save(tmp_path / "grey.npy", sequences((2, 5, 1, 6, 6)))
    out = tmp_path / "out"
    args = ["--checkpoint", str(tmp_path / "ckpt.pt"), "--input", str(tmp_path / "grey.npy"), "--out", str(out)]

    def no_space(*args, **kwargs):  # after predictions.npy, inputs.npy and the first strip
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(predict, "save_prediction_gif", no_space)
        assert predict.main(args) == 1
    assert capsys.readouterr().err == f"predict.py: error: no space left writing {out / 'gifs' / '0_grey_0.gif'}\n"
    assert tree(out) == {}  # no predictions.npy, nothing staged

    assert predict.main(args) == 0
    earlier = tree(out)
    np.save(tmp_path / "grey.npy", sequences((2, 5, 1, 6, 6), seed=1))  # new predictions under the same names
    monkeypatch.setattr(predict, "save_prediction_gif", no_space)
    assert predict.main([*args, "--overwrite"]) == 1
    assert capsys.readouterr().err.startswith("predict.py: error: no space left writing ")
    assert tree(out) == earlier


def test_a_sequence_name_of_253_characters_is_cut_in_file_names(tmp_path):
    """A frame folder may have a name of 255 bytes; 253 of them with "0_" and ".png" made 259 (ENAMETOOLONG)."""
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 6, 6))
    name = "walk-" + "a" * 248
    (tmp_path / "clips" / name).mkdir(parents=True)
    for t, frame in enumerate(sequences((4, 6, 6))):
        Image.fromarray(frame).save(tmp_path / "clips" / name / f"{t}.png")
    args = ["--checkpoint", tmp_path / "ckpt.pt", "--input", tmp_path / "clips", "--out", tmp_path / "out"]
    assert predict.main(list(map(str, args))) == 0
    summary, _, _ = check_outputs(tmp_path / "out", 1, N_IN, N_OUT, (1, 6, 6))
    stem = "0_" + name[:predict.NAME_CHARS]
    assert summary["sequences"][0]["name"] == name and len(name) == 253
    assert (summary["sequences"][0]["strip"], summary["sequences"][0]["gif"]) == (
        os.path.join("strips", stem + ".png"), os.path.join("gifs", stem + ".gif"))


def test_predict_speaks_every_progress_period_when_its_output_is_a_file(tmp_path, monkeypatch, capsys):
    """Not on a terminal: plain lines (count, rate, time left) instead of a bar, here one per batch."""
    import convlstm.runtime as runtime
    monkeypatch.setattr(runtime, "PROGRESS_SECONDS", 0.0)
    predict = load_predict()
    train_checkpoint(tmp_path / "ckpt.pt", frame_shape=(1, 16, 16))
    model = load_model(tmp_path / "ckpt.pt")
    predict.predict_all(model, torch.device("cpu"), torch.rand(5, model.info.n_in, 1, 16, 16), 2, batch_size=2)
    err = capsys.readouterr().err
    assert re.findall(r"predict.py: (\d)/5 sequences, [\d.]+/s, \S+ left", err) == ["2", "4"], err
