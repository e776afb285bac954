"""The checkpoint's owner, convlstm/checkpoint.py (issue 26, step i): its format has a number, files written before the
number still load and resume, and a saved config that was edited or damaged is one line on --resume, as it is for
evaluate.py, predict.py and load_model. data/checkpoint_format0.pt was written by the landed main of 2026-12-05
(13ff252): `train.py --n_hidden_dim 2 --image_size 16 --num_train 8 --num_val 2 --batch_size 4 --max_steps 2`.
"""
import pathlib
import shutil

import pytest
import torch

from convlstm import load_model
from convlstm.checkpoint import FORMAT, CheckpointError, load_checkpoint
from helpers import TINY, run, train_script

FORMAT_0 = pathlib.Path(__file__).parent / "data" / "checkpoint_format0.pt"


def run_dir_holding(tmp_path, state):
    """A run_dir whose checkpoints/latest.pt is `state`."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "latest.pt")
    return tmp_path / "run"


def test_a_checkpoint_written_before_the_format_number_loads_and_resumes(tmp_path):
    old = torch.load(FORMAT_0, weights_only=True)
    assert "format" not in old and old["step"] == 2
    model = load_model(FORMAT_0)
    assert model.info.kind == "train.py" and model.info.n_in == 10
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(FORMAT_0, run_dir / "checkpoints" / "latest.pt")
    # The saved config alone (its run_dir was elsewhere): --run_dir and --resume are all a user types.
    assert train_script.main(["--run_dir", str(run_dir), "--resume", "--max_steps", "4"]) == 0
    resumed = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert resumed["format"] == FORMAT and resumed["step"] == 4


def test_a_checkpoint_of_a_newer_format_is_refused_by_name(tmp_path):
    state = torch.load(FORMAT_0, weights_only=True)
    path = run_dir_holding(tmp_path, {**state, "format": FORMAT + 1}) / "checkpoints" / "latest.pt"
    with pytest.raises(CheckpointError, match=f"has format {FORMAT + 1}, newer than this convlstm's {FORMAT}"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="newer than this convlstm's"):
        load_model(path)


@pytest.mark.parametrize("edit, expected", [
    ({"n_hidden_dim": 3}, "weights do not fit the model: encoder_1_convlstm.conv.weight is (8, 3, 3, 3), the "
                             "model's is (12, 4, 3, 3)"),
    ({"n_hidden_dim": "2"}, 'n_hidden_dim must be int, got "2": the checkpoint was edited or damaged'),
    ({"lr_schedule": "sometimes"}, "lr_schedule 'sometimes' is not one of constant, cosine, onecycle"),
], ids=["weights-no-longer-fit", "a-string-for-an-int", "an-unknown-choice"])
def test_an_edited_saved_config_is_one_line_on_resume(tmp_path, capsys, edit, expected):
    state = torch.load(FORMAT_0, weights_only=True)
    run_dir = run_dir_holding(tmp_path, {**state, "config": {**state["config"], **edit}})
    assert train_script.main(["--run_dir", str(run_dir), "--resume", "--max_steps", "4"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: ") and expected in errors[0], errors


def test_a_saved_config_that_is_no_dict_is_one_line(tmp_path, capsys):
    state = torch.load(FORMAT_0, weights_only=True)
    run_dir = run_dir_holding(tmp_path, {**state, "config": ["n_hidden_dim", 2]})
    assert train_script.main(["--run_dir", str(run_dir), "--resume", "--max_steps", "4"]) == 1
    err = capsys.readouterr().err
    assert "its config is a list, not a dict" in err and "Traceback" not in err


def test_resuming_with_another_model_names_both_models(tmp_path, capsys):
    openstl = ["--model", "openstl_convlstm", "--num_layers", "2", "--patch_size", "4", "--max_steps", "2"]
    assert run(tmp_path / "run", *openstl) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(TINY + ["--run_dir", str(tmp_path / "run"), "--resume", "--model", "tutorial"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--model tutorial: the checkpoint in {tmp_path / 'run'} holds a openstl_convlstm model" in err
    assert "applies to --model openstl_convlstm only" not in err


def test_a_resume_reads_each_checkpoint_file_once(tmp_path, monkeypatch):
    """The flags' parse reads the saved config, the start the state: one read of each file serves both (a file that
    changed in between would be read again)."""
    assert run(tmp_path / "run", "--max_steps", 4, "--checkpoint_every", 2) == 0
    reads, load = [], torch.load

    def counted(path, *args, **kwargs):
        reads.append(pathlib.Path(path).name)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    # --max_steps 4: the run is at its end, so no save (whose pruning reads the step files it may remove) follows.
    assert train_script.main(["--run_dir", str(tmp_path / "run"), "--resume", "--max_steps", "4"]) == 0
    assert sorted(reads) == ["latest.pt", "step_2.pt", "step_4.pt"]
