"""train.py and evaluate.py on users' own sequences: RGB, non-square frames, any n_in / n_out, arrays and videos,
datasets from Python; bad input stops with one line and leaves nothing behind."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_script  # noqa: E402

TINY = ["--n_hidden_dim", "4", "--batch_size", "4", "--max_steps", "3", "--log_every", "3", "--image_every", "3",
        "--num_workers", "0", "--device", "cpu", "--backend", "torch"]


def rgb_array(path, shape=(8, 11, 3, 12, 16), seed=0):
    array = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    np.save(path, array)
    return array


def run_cli(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_rgb_non_square_5_to_4_trains_and_evaluates(tmp_path):
    rgb_array(tmp_path / "clips.npy")
    run_dir = tmp_path / "run"
    assert train_script.main(["--run_dir", str(run_dir), "--data", str(tmp_path / "clips.npy"), "--n_in", "5",
                              "--n_out", "4", "--stride", "2", "--val_fraction", "0.25", *TINY]) == 0
    state = read_checkpoint(str(run_dir / "checkpoints" / "latest.pt"))
    assert state["frame_shape"] == [3, 12, 16]
    assert state["config"]["in_chan"] == 3 and state["config"]["n_steps_past"] == 5
    assert state["model"]["decoder_CNN.weight"].shape[0] == 3  # RGB in, RGB out
    # evaluate.py: by default the sequences the run held out (2 of 8, windows of 9 frames every 2 in 11: 2 each)
    held = run_cli("evaluate.py", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--out_dir", tmp_path / "e1",
                   "--device", "cpu")
    assert held.returncode == 0, held.stderr
    metrics = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert metrics["num_sequences"] == 4 and metrics["data"]["source"] == "validation split of the training run"
    assert len(metrics["per_frame"]["ssim"]) == 4
    on_file = run_cli("evaluate.py", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--out_dir",
                      tmp_path / "e2", "--data", tmp_path / "clips.npy", "--device", "cpu")
    assert on_file.returncode == 0, on_file.stderr
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["num_sequences"] == 8  # one window each


def test_video_folder_trains(tmp_path):
    av = pytest.importorskip("av", reason="PyAV is the optional video extra")
    (tmp_path / "videos").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "b.mp4", "c.avi"):
        with av.open(str(tmp_path / "videos" / name), "w") as container:
            stream = container.add_stream("libx264" if name.endswith("mp4") else "mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
            for _ in range(12):
                frame = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    run_dir = tmp_path / "run"
    assert train_script.main(["--run_dir", str(run_dir), "--data", str(tmp_path / "videos"), "--n_in", "3",
                              "--n_out", "3", "--resize", "16", "--stride", "3", "--val_fraction", "0.34",
                              "--channels", "1", *TINY]) == 0
    assert read_checkpoint(str(run_dir / "checkpoints" / "latest.pt"))["frame_shape"] == [1, 16, 16]


class Bouncing(torch.utils.data.Dataset):
    """Any torch Dataset of float32 (T, C, H, W) in [0, 1]."""

    def __init__(self, count):
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        frames = torch.zeros(7, 2, 8, 10)
        for t in range(7):
            frames[t, :, 2:5, (index + t) % 8:(index + t) % 8 + 2] = 1.0
        return frames


def test_datasets_from_python(tmp_path):
    run_dir = tmp_path / "run"
    assert train_script.main(["--run_dir", str(run_dir), "--n_in", "4", "--n_out", "3", *TINY],
                             train_dataset=Bouncing(12), val_dataset=Bouncing(4)) == 0
    state = read_checkpoint(str(run_dir / "checkpoints" / "latest.pt"))
    assert state["frame_shape"] == [2, 8, 10] and state["config"]["in_chan"] == 2


@pytest.mark.parametrize("case", ["channels_do_not_match", "windows_longer_than_sequences", "ambiguous_layout",
                                  "float_out_of_range", "one_sequence_no_val_data"])
def test_bad_own_data_stops_with_one_line_and_writes_nothing(tmp_path, case):
    data = tmp_path / "clips.npy"
    flags = ["--n_in", "5", "--n_out", "4"]
    if case == "channels_do_not_match":
        rgb_array(data)
        flags += ["--in_chan", "1"]
        expected = "the data has 3 channel(s) but --in_chan is 1"
    elif case == "windows_longer_than_sequences":
        rgb_array(data)
        flags = ["--n_in", "10", "--n_out", "10"]
        expected = "clips.npy[0] has 11 frames, shorter than one window of 20"
    elif case == "ambiguous_layout":
        np.save(data, np.zeros((30, 30, 8, 8), dtype=np.uint8))
        expected = "ambiguous"
    elif case == "float_out_of_range":
        np.save(data, np.full((4, 9, 1, 8, 8), 3.0, dtype=np.float32))
        expected = "float values in [3, 3]"
    else:
        rgb_array(data, shape=(1, 11, 3, 12, 16))
        expected = "--val_fraction needs two or more sequences to split, got 1; pass --val_data"
    proc = run_cli("train.py", "--run_dir", tmp_path / "run", "--data", data, *flags, *TINY)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and expected in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
