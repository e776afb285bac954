"""OpenSTL's ConvLSTM through the toolkit's entry points: model_from_config and forecast for both models, load_model
for each kind of OpenSTL file (outputs equal to the model the weights came from), evaluate.py and predict.py on a
tiny OpenSTL checkpoint, and bad input as one line."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm import EncoderDecoderConvLSTM, OpenSTLConvLSTM, forecast, load_model, model_from_config
from convlstm.model import check_frame_size, model_config, preset_config, to_btchw
from convlstm.checkpoint import CheckpointError
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
# train.py's config keys for a tiny OpenSTL model: 2 layers of 4 channels, 2x2 patches of 16x16 grey frames.
TINY = dict(model="openstl_convlstm", n_hidden_dim=4, num_layers=2, kernel_size=3, patch_size=2, layer_norm=False,
            reverse_scheduled_sampling=False, cell_output="tanh_c", in_chan=1, image_size=16, n_steps_past=3,
            n_steps_ahead=2, backend="torch", seed=0, data=None)
TUTORIAL = dict(n_hidden_dim=3, in_chan=1, kernel_size=3, peephole=False, backend="torch")


def tiny_openstl(seed=0, **overrides):
    torch.manual_seed(seed)
    return model_from_config(dict(TINY, **overrides)).eval()


def import_script(name):
    return load_script(f"{name}.py")


def test_model_from_config_builds_each_model():
    tutorial = model_from_config(TUTORIAL)
    assert type(tutorial) is EncoderDecoderConvLSTM and model_from_config(dict(TUTORIAL, model="tutorial")).backend \
        == "torch"
    model = model_from_config(TINY, frame_shape=(1, 8, 12))
    assert type(model) is OpenSTLConvLSTM and model.num_hidden == [4, 4] and model.patch_size == 2
    assert model.in_shape == (3, 1, 8, 12) and (model.pre_seq_length, model.aft_seq_length) == (3, 2)
    assert model.cell_list[0].conv_x[0].kernel_size == (3, 3) and model.cell_list[0].cell_output == "tanh_c"
    assert model_from_config(TINY).in_shape == (3, 1, 16, 16)  # image_size without frame_shape
    norm = model_from_config(dict(TINY, layer_norm=True, cell_output="g", num_layers=3))
    assert len(norm.cell_list) == 3 and len(norm.cell_list[0].conv_x) == 2 and norm.cell_list[2].cell_output == "g"
    assert model_config(norm) == {k: v for k, v in dict(TINY, layer_norm=True, cell_output="g", num_layers=3).items()
                                  if k not in ("backend", "seed", "data")}
    with pytest.raises(ValueError, match="unknown model 'predrnn'"):
        model_from_config(dict(TINY, model="predrnn"))
    # OpenSTL's ConvLSTM-S through the config keys train.py saves: the preset's weights, key for key
    preset = model_from_config(dict(preset_config("convlstm_s"), in_chan=1, backend="torch"))
    expected = OpenSTLConvLSTM.from_preset("convlstm_s", backend="torch").state_dict()
    assert {k: v.shape for k, v in preset.state_dict().items()} == {k: v.shape for k, v in expected.items()}


def test_forecast_is_one_call_for_both_models():
    x = torch.rand(2, 3, 1, 8, 6)
    torch.manual_seed(0)
    tutorial, openstl = model_from_config(TUTORIAL).eval(), tiny_openstl()
    with torch.no_grad():
        assert torch.equal(forecast(tutorial, x, 4), to_btchw(tutorial(x, future_seq=4)))
        assert torch.equal(forecast(openstl, x, 4), openstl.predict(x, 4))
        # under DDP's and torch.compile's wrappers (.module, ._orig_mod): predict, which is no forward, of the model
        wrapped = torch.nn.Module()
        wrapped.module = torch.nn.Module()
        wrapped.module._orig_mod = openstl
        assert torch.equal(forecast(wrapped, x, 4), openstl.predict(x, 4))
    assert forecast(openstl, x, 4).shape == forecast(tutorial, x, 4).shape == (2, 4, 1, 8, 6)
    check_frame_size(tutorial, 7, 5)
    with pytest.raises(ValueError, match="frames of 7x6 do not divide into the model's 2x2 patches"):
        check_frame_size(openstl, 7, 6)


def openstl_files(tmp_path, model):
    """OpenSTL's own kinds of file of `model`'s weights: {name: kind}."""
    weights = model.state_dict()
    optimizer = torch.optim.Adam(model.parameters()).state_dict()
    torch.save({"epoch": 3, "optimizer": optimizer, "state_dict": weights,
                "scheduler": {"last_epoch": 9, "base_lrs": [5e-4]}}, tmp_path / "v020.pth")
    torch.save(weights, tmp_path / "checkpoint.pth")
    torch.save({"state_dict": {"model." + k: v for k, v in weights.items()}, "epoch": 1}, tmp_path / "lightning.ckpt")
    return {"v020.pth": "openstl", "checkpoint.pth": "state_dict", "lightning.ckpt": "lightning"}


@pytest.mark.parametrize("cell_output", ["tanh_c", "g"])
def test_load_model_reads_openstl_files(tmp_path, cell_output):
    original = tiny_openstl(cell_output=cell_output)
    x = torch.rand(2, 10, 1, 8, 6)
    with torch.no_grad():
        expected = original.predict(x, 10)
    for name, kind in openstl_files(tmp_path, original).items():
        model = load_model(tmp_path / name, cell_output=cell_output)
        assert type(model) is OpenSTLConvLSTM and not model.training
        assert (model.info.kind, model.info.model, model.info.n_in, model.info.n_out) == \
            (kind, "openstl_convlstm", 10, 10)
        assert (model.info.in_chan, model.info.out_chan, model.info.frame_size, model.patch_size) == (1, 1, None, 2)
        with torch.no_grad():
            torch.testing.assert_close(forecast(model, x, model.info.n_out), expected, rtol=1e-6, atol=1e-6)
    # 4 patch channels: 2x2 patches of grey frames, or one pixel of 4-channel frames
    wide = load_model(tmp_path / "v020.pth", channels=4, cell_output=cell_output)
    assert (wide.patch_size, wide.info.in_chan) == (1, 4)


def test_load_model_reads_openstl_train_checkpoints_and_layer_norm(tmp_path):
    torch.manual_seed(0)  # frame_shape (8x12), not image_size, sizes layer norm
    original = model_from_config(dict(TINY, layer_norm=True), frame_shape=(1, 8, 12)).eval()
    torch.save({"model": original.state_dict(), "config": dict(TINY, layer_norm=True), "frame_shape": [1, 8, 12]},
               tmp_path / "train.pt")
    model = load_model(tmp_path / "train.pt")
    assert (model.info.kind, model.info.model, model.info.n_in, model.info.n_out, model.info.frame_size) == \
        ("train.py", "openstl_convlstm", 3, 2, (8, 12))
    assert load_model(tmp_path / "train.pt", cell_output="g").cell_list[1].cell_output == "g"
    torch.save(original.state_dict(), tmp_path / "bare.pth")  # layer norm's weights give the frame size
    bare = load_model(tmp_path / "bare.pth")
    assert bare.info.frame_size == (8, 12) and bare.in_shape == (10, 1, 8, 12)
    x = torch.rand(1, 3, 1, 8, 12)
    with torch.no_grad():
        for loaded in (model, bare):
            torch.testing.assert_close(forecast(loaded, x, 2), original.predict(x, 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["channels_do_not_divide", "channels_contradict_config", "cell_output_of_tutorial",
                                  "missing_weight"])
def test_load_model_bad_openstl_input_is_one_line(tmp_path, case):
    path = tmp_path / "ckpt.pth"
    weights = tiny_openstl().state_dict()
    torch.save(weights, path)
    options = {}
    if case == "channels_do_not_divide":
        options, match = {"channels": 3}, "4 patch channels .*no patch_size makes of 3-channel frames"
    elif case == "channels_contradict_config":
        torch.save({"model": weights, "config": TINY}, path)
        options, match = {"channels": 3}, "its model takes 1-channel frames, not 3"
    elif case == "cell_output_of_tutorial":
        torch.save(model_from_config(TUTORIAL).state_dict(), path)
        options, match = {"cell_output": "g"}, "cell_output is an option of the openstl_convlstm model, and this is the tutorial model"
    else:
        torch.save({k: v for k, v in weights.items() if k != "conv_last.weight"}, path)
        match = "weights do not fit the model: missing conv_last.weight"
    with pytest.raises(CheckpointError, match=match) as caught:
        load_model(path, **options)
    assert "\n" not in str(caught.value)


def test_evaluate_scores_openstl_checkpoints(tmp_path, capsys):
    """A train.py checkpoint of OpenSTL's model on an array, predictions equal to forecast's; OpenSTL's own .pth (v0.2.0
    cell) on the generated split as OpenSTL ran it, 10 in 10 out at 64x64; channels that do not divide: one line."""
    evaluate = import_script("evaluate")
    model = tiny_openstl()
    torch.save({"model": model.state_dict(), "config": TINY, "frame_shape": [1, 16, 16], "step": 4},
               tmp_path / "train.pt")
    data = np.random.default_rng(0).integers(0, 256, (3, 5, 16, 16), dtype=np.uint8)  # (N, T, H, W)
    np.save(tmp_path / "data.npy", data)
    evaluate.main(["--checkpoint", str(tmp_path / "train.pt"), "--data", str(tmp_path / "data.npy"), "--layout",
                   "NTHW", "--out_dir", str(tmp_path / "a"), "--device", "cpu", "--save_predictions"])
    results = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert results["num_sequences"] == 3 and results["model_config"]["model"] == "openstl_convlstm"
    saved = np.load(tmp_path / "a" / "predictions.npz")
    x = torch.from_numpy(data[:, :3, None] / np.float32(255))
    with torch.no_grad():
        np.testing.assert_allclose(saved["pred"], forecast(model, x, 2).numpy(), rtol=1e-5, atol=1e-6)

    torch.save({"state_dict": tiny_openstl(cell_output="g").state_dict(), "epoch": 200}, tmp_path / "v020.pth")
    evaluate.main(["--checkpoint", str(tmp_path / "v020.pth"), "--cell_output", "g", "--num_test", "2",
                   "--out_dir", str(tmp_path / "b"), "--device", "cpu"])
    results = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (results["n_steps_past"], results["n_steps_ahead"], results["backend"]) == (10, 10, "torch")
    assert results["model_config"]["cell_output"] == "g" and results["data"]["source"] == "generated"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        evaluate.main(["--checkpoint", str(tmp_path / "v020.pth"), "--openstl_channels", "3", "--out_dir",
                       str(tmp_path / "c"), "--device", "cpu"])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.count("\n") == 1
    assert error.startswith("evaluate.py: error: checkpoint ") and "no patch_size makes of 3-channel frames" in error


def test_predict_with_an_openstl_checkpoint(tmp_path, capsys):
    model = tiny_openstl()
    torch.save({"model": model.state_dict(), "config": TINY, "frame_shape": [1, 16, 16]}, tmp_path / "train.pt")
    np.save(tmp_path / "data.npy", np.random.default_rng(0).integers(0, 256, (2, 4, 1, 16, 16), dtype=np.uint8))
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(tmp_path / "train.pt"),
                             "--input", str(tmp_path / "data.npy"), "--out", str(tmp_path / "out"), "--n_out", "3"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    predictions, inputs = np.load(tmp_path / "out" / "predictions.npy"), np.load(tmp_path / "out" / "inputs.npy")
    assert predictions.shape == (2, 3, 1, 16, 16) and inputs.shape == (2, 3, 1, 16, 16)
    with torch.no_grad():
        expected = forecast(model, torch.from_numpy(inputs), 3).clamp(0, 1)
    torch.testing.assert_close(torch.from_numpy(predictions), expected)
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert (summary["model"], summary["n_in"], summary["n_out"]) == ("openstl_convlstm", 3, 3)
    # frames that do not divide into the patches: one line, nothing written
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    np.save(tmp_path / "odd.npy", np.zeros((1, 10, 1, 15, 16), dtype=np.uint8))
    predict = import_script("predict")
    assert predict.main(["--checkpoint", str(tmp_path / "bare.pth"), "--input", str(tmp_path / "odd.npy"), "--out",
                         str(tmp_path / "odd")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "frames of 15x16 do not divide into the model's 2x2 patches" in error
    assert not (tmp_path / "odd").exists()
