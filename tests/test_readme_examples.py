"""The README's own-data examples and its load_model example, run as written on data made here, so they cannot go
stale: the commands are read from the README's fenced blocks after their markers."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block_after(marker):
    """The fenced block after `<!-- marker -->` in the README."""
    found = re.search(rf"<!-- {marker} -->\s*```[a-z]*\n(.*?)```", README, flags=re.S)
    assert found, f"README.md has no fenced block after <!-- {marker} -->"
    return found.group(1)


def run_commands(block, cwd):
    """Each `python <script>.py ...` line of the block, with the repository's script, in `cwd`."""
    for line in block.strip().splitlines():
        words = shlex.split(line)
        assert words[0] == "python" and words[1].endswith(".py"), line
        proc = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], cwd=cwd, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"


def moving_squares(count, frames, height, width, seed):
    """uint8 (count, frames, height, width, 3): a bright square moving across a dark frame, one per sequence."""
    rng = np.random.default_rng(seed)
    clips = np.zeros((count, frames, height, width, 3), dtype=np.uint8)
    for n in range(count):
        y, x, dy, dx = rng.integers(0, height - 8), rng.integers(0, width - 8), rng.choice([-2, 2]), 2
        for t in range(frames):
            y, x = (y + dy) % (height - 8), (x + dx) % (width - 8)
            clips[n, t, y:y + 8, x:x + 8] = 220
    return clips


def test_own_data_video_example_trains_evaluates_and_predicts(tmp_path):
    av = pytest.importorskip("av", reason="PyAV is the optional video extra")
    (tmp_path / "my_videos").mkdir()
    for n, clip in enumerate(moving_squares(5, 30, 48, 64, seed=0)):
        with av.open(str(tmp_path / "my_videos" / f"clip_{n}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for frame in clip:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    run_commands(block_after("own-data-videos"), tmp_path)
    assert (tmp_path / "runs/my_videos/checkpoints/best.pt").is_file()
    assert (tmp_path / "eval/my_videos/metrics.json").is_file() and (tmp_path / "eval/my_videos/samples.gif").is_file()
    predictions = np.load(tmp_path / "predictions/my_videos/predictions.npy")
    assert predictions.shape == (5, 10, 1, 32, 32) and predictions.dtype == np.float32
    assert len(list((tmp_path / "predictions/my_videos/gifs").glob("*.gif"))) == 5

    # The README's Python example, on the checkpoint the commands just made.
    namespace = {"checkpoint": str(tmp_path / "runs/my_videos/checkpoints/best.pt")}
    exec(block_after("load-model-example"), namespace)
    assert namespace["future"].shape == (2, 10, 1, 32, 32)


def test_own_data_array_example_trains(tmp_path):
    np.save(tmp_path / "my_sequences.npy", moving_squares(6, 20, 16, 16, seed=1)[..., :1].transpose(0, 1, 4, 2, 3))
    run_commands(block_after("own-data-array"), tmp_path)
    assert (tmp_path / "runs/my_array/checkpoints/latest.pt").is_file()
