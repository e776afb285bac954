"""--loss mse|bmse|bmae (convlstm.losses): HKO-7's weights by the true rain rate's band, the no-data mask, both
models, kept in the checkpoint and on --resume; refused with one line where the data have no rain rate."""
import pytest
import torch

from convlstm.checkpoint import read_checkpoint
from convlstm.data.units import Units
from convlstm.losses import FrameLoss, LossError, rain_weights
from helpers import load_script
from test_radar_data import TINY, archive

train_script = load_script("train")
OPENSTL_ONLY = ("--model", "--num_layers", "--patch_size")  # of test_radar_data's TINY: not the tutorial's flags
RAIN = Units("rainrate")


def test_weights_follow_hko7s_bands_of_the_true_rain_rate():
    # (rates just off the band edges: the [0, 1] scale's float32 round trip moves an edge value by ~1e-6)
    rain = torch.tensor([0.0, 0.3, 0.6, 1.9, 2.1, 4.9, 5.1, 9.9, 10.1, 29.0, 31.0, 100.0])
    weights = rain_weights(RAIN.to_unit(rain), RAIN)
    assert weights.tolist() == [1, 1, 1, 1, 2, 2, 5, 5, 10, 10, 30, 30]
    dbz = Units("dbz")  # dBZ data: the rate through Marshall-Palmer's Z-R (23 dBZ is 1 mm/h, 46.5 dBZ 30 mm/h)
    assert rain_weights(dbz.to_unit(torch.tensor([10.0, 23.0, 47.0])), dbz).tolist() == [1, 1, 30]


def test_balanced_losses_weigh_each_pixel_and_skip_no_data():
    target = RAIN.to_unit(torch.tensor([[0.0, 3.0], [12.0, 40.0]]))  # weights 1, 2, 10, 30
    pred = target + torch.tensor([[0.1, -0.1], [0.2, 0.05]])
    weights = torch.tensor([[1.0, 2.0], [10.0, 30.0]])
    errors = torch.tensor([[0.1, 0.1], [0.2, 0.05]])
    assert FrameLoss("bmse", RAIN)(pred, target).item() == pytest.approx((weights * errors ** 2).mean().item())
    assert FrameLoss("bmae", RAIN)(pred, target).item() == pytest.approx((weights * errors).mean().item())
    valid = torch.tensor([[True, True], [True, False]])  # the 40 mm/h pixel has no data: out, and not counted
    expected = (weights * errors ** 2)[valid].sum() / 3
    assert FrameLoss("bmse", RAIN)(pred, target, valid).item() == pytest.approx(expected.item())
    assert FrameLoss("mse")(pred, target).item() == pytest.approx((errors ** 2).mean().item())


@pytest.mark.parametrize("units", [None, Units("none", value_range=(0.0, 1.0))])
def test_balanced_losses_need_rain_rates(units):
    with pytest.raises(LossError, match="--loss bmse weighs pixels by rain rate"):
        FrameLoss("bmse", units)


def test_moving_mnist_with_bmse_is_one_line_and_writes_nothing(tmp_path, capsys):
    status = train_script.main(["--run_dir", str(tmp_path / "run"), "--loss", "bmse", "--n_hidden_dim", "4",
                                "--image_size", "16", "--num_train", "8", "--max_steps", "1", "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "--loss bmse weighs pixels by rain rate" in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", ["openstl_convlstm", "tutorial"])
def test_both_models_train_with_bmse_and_resume_keeps_it(tmp_path, model):
    archive(tmp_path / "radar.nc")
    run = tmp_path / "run"
    own = TINY if model == "openstl_convlstm" else [word for flag, value in zip(TINY[::2], TINY[1::2])
                                                     if flag not in OPENSTL_ONLY for word in (flag, value)] + [
        "--model", "tutorial"]
    flags = ["--run_dir", str(run), "--data", str(tmp_path / "radar.nc"), "--val_fraction", "0.5",
             "--num_workers", "0", *own]
    assert train_script.main([*flags, "--loss", "bmse"]) == 0
    state = read_checkpoint(str(run / "checkpoints" / "latest.pt"))
    assert state["config"]["loss"] == "bmse"
    assert train_script.main([*flags, "--max_steps", "5", "--resume"]) == 0  # no --loss: the checkpoint's
    state = read_checkpoint(str(run / "checkpoints" / "latest.pt"))
    assert state["config"]["loss"] == "bmse" and state["step"] == 5


def test_hko7_preset_is_hko7s_setting_on_an_archive(tmp_path):
    """--preset hko7: OpenSTL's ConvLSTM 5 -> 20 with HKO-7's Z-R relation and balanced MSE; flags still override its
    sizes."""
    archive(tmp_path / "radar.nc", frames=60, gap_at=30)
    archive(tmp_path / "val.nc", frames=30, missing=0)
    run = tmp_path / "run"
    assert train_script.main(["--run_dir", str(run), "--data", str(tmp_path / "radar.nc"), "--val_data",
                              str(tmp_path / "val.nc"), "--preset", "hko7", "--n_hidden_dim", "4", "--num_layers",
                              "1", "--batch_size", "2", "--max_steps", "2", "--num_workers", "0", "--device",
                              "cpu"]) == 0
    config = read_checkpoint(str(run / "checkpoints" / "latest.pt"))["config"]
    assert (config["model"], config["n_steps_past"], config["n_steps_ahead"]) == ("openstl_convlstm", 5, 20)
    assert (config["zr_a"], config["zr_b"], config["loss"], config["transform"]) == (58.53, 1.56, "bmse", "rainrate")
    assert (config["n_hidden_dim"], config["num_layers"], config["patch_size"]) == (4, 1, 4)
