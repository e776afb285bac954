"""convlstm export and the installed command: the exported ONNX file (in onnxruntime) and torch.export program give the
checkpoint's outputs for every package model, at batch 1 and 5; a bad request is one line and writes nothing."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from convlstm import forecast, load_model
from convlstm.cli.main import main as convlstm_main
from convlstm.model import model_from_config

# train.py checkpoints of each model: 3 frames in, 4 out, 16x16 grey frames, fresh weights.
CONFIGS = {
    "tutorial": dict(model="tutorial", n_hidden_dim=4, in_chan=1, kernel_size=3, n_steps_past=3, n_steps_ahead=4,
                     image_size=16),
    "openstl_convlstm": dict(model="openstl_convlstm", n_hidden_dim=4, num_layers=2, patch_size=4, in_chan=1,
                             kernel_size=3, n_steps_past=3, n_steps_ahead=4, image_size=16),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder, paths = tmp_path_factory.mktemp("checkpoints"), {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = model_from_config(config, backend="torch", frame_shape=(1, 16, 16))
        paths[name] = folder / f"{name}.pt"
        torch.save({"model": model.state_dict(), "config": config, "frame_shape": [1, 16, 16], "step": 7}, paths[name])
    return paths


def expected(checkpoint, x, n_out=None):
    model = load_model(checkpoint, backend="torch")
    with torch.no_grad():
        return forecast(model, x, n_out or model.info.n_out).numpy()


def export(checkpoint, out, fmt, *flags):
    return convlstm_main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out), *flags])


@pytest.mark.parametrize("model", list(CONFIGS))
def test_pt2_program_gives_the_checkpoints_outputs(model, checkpoints, tmp_path):
    assert export(checkpoints[model], tmp_path / "m.pt2", "pt2") == 0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    for batch in (1, 5):
        x = torch.rand(batch, 3, 1, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            y = program(x).numpy()
        assert y.shape == (batch, 4, 1, 16, 16)
        np.testing.assert_allclose(y, expected(checkpoints[model], x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", list(CONFIGS))
def test_onnx_file_in_onnxruntime_gives_the_checkpoints_outputs(model, checkpoints, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    assert export(checkpoints[model], tmp_path / "m.onnx", "onnx", "--n_out", "6") == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    for batch in (1, 5):
        x = torch.rand(batch, 3, 1, 16, 16, generator=torch.Generator().manual_seed(batch))
        (y,) = session.run(None, {"x": x.numpy()})
        assert y.shape == (batch, 6, 1, 16, 16)  # --n_out 6, not the checkpoint's 4
        np.testing.assert_allclose(y, expected(checkpoints[model], x, 6), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case, code, message", [
    ("n_out_zero", 2, "--n_out 0: must be in [1, 10000]"),
    ("not_a_checkpoint", 1, "is unreadable"),
    ("unwritable_out", 1, "--out"),
    ("existing_out", 1, "exists; pass --overwrite"),
])
def test_a_bad_request_is_one_line_and_writes_nothing(case, code, message, checkpoints, tmp_path, capsys):
    checkpoint, out, flags = checkpoints["tutorial"], tmp_path / "out" / "m.pt2", []
    out.parent.mkdir()
    if case == "n_out_zero":
        flags = ["--n_out", "0"]
    elif case == "not_a_checkpoint":
        checkpoint = tmp_path / "notes.pt"
        checkpoint.write_text("not a checkpoint\n")
    elif case == "unwritable_out":
        if os.geteuid() == 0:
            out = pathlib.Path("/proc/m.pt2")  # root writes through permission bits; /proc takes no new file
        else:
            out.parent.chmod(0o500)
    else:
        out.write_bytes(b"the user's file")
    before = sorted(os.listdir(out.parent)) if out.parent != pathlib.Path("/proc") else None
    assert export(checkpoint, out, "pt2", *flags) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("export: error: ") and message in err, err
    if before is None:
        assert not out.exists()
    else:
        assert sorted(os.listdir(out.parent)) == before  # no file, no temp file
    if case == "existing_out":
        assert out.read_bytes() == b"the user's file"


def test_the_installed_command_runs_each_script(capsys):
    """`convlstm` is installed beside this interpreter by the README's `pip install -e ".[dev]"`."""
    command = pathlib.Path(sys.executable).parent / "convlstm"
    assert command.is_file(), "pip install -e . installs the convlstm command"
    shown = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("convlstm 0.")
    assert convlstm_main(["--help"]) == 0 and "train" in capsys.readouterr().out
    for name, flag in (("train", "--lr_schedule"), ("evaluate", "--out_dir"), ("predict", "--n_out"),
                       ("export", "--format")):
        assert convlstm_main([name, "--help"]) == 0
        assert flag in capsys.readouterr().out, name
    assert convlstm_main(["fit"]) == 2 and "unknown command 'fit'" in capsys.readouterr().err
    assert convlstm_main(["bench", "--help"]) == 0 and "{data,dispatch,gates,inference,memory,train}" in \
        capsys.readouterr().out
    assert convlstm_main(["bench"]) == 2 and "usage: convlstm bench {" in capsys.readouterr().err
    assert convlstm_main(["bench", "speed"]) == 2 and "no benchmark 'speed'" in capsys.readouterr().err


def test_train_help_gives_each_default_once(capsys):
    assert convlstm_main(["train", "--help"]) == 0
    shown = capsys.readouterr().out
    entries = {}  # flag -> its help text, joined over its lines
    for block in re.split(r"\n  (?=-)", shown):
        entries[block.split()[0].rstrip(",")] = " ".join(block.split())
    assert "(default: None)" not in shown
    for flag in ("--layout", "--data", "--num_val", "--in_chan", "--use_amp"):
        assert entries[flag].count("default") <= 1, entries[flag]
    assert entries["--lr"].endswith("Adam learning rate, at most 1.0: the schedule's peak (default: 0.0001)")
