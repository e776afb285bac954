"""train.py with OpenSTL's ConvLSTM (--model openstl_convlstm, --preset): its training step against the transcription
of OpenSTL's code, scheduled sampling, resume bit for bit, DDP with its unused parameters, presets and bad flags."""
import json
from types import SimpleNamespace

import pytest
import torch

import openstl_reference as ref
from convlstm.model import model_from_config
from convlstm.training.config import parse_config
from convlstm.models import make_objective
from convlstm.models.openstl_convlstm import OpenSTLObjective
from helpers import assert_same_weights, default_dtype, single_process_group, train_script

# 16x16 frames in 4x4 patches (a 4x4 grid of 16 channels), two layers of 4; 24 sequences, 2 per micro-batch,
# 2 micro-batches per step: 6 steps per epoch. eta falls by 0.1 per step.
OPENSTL = ["--model", "openstl_convlstm", "--n_hidden_dim", "4", "--num_layers", "2", "--patch_size", "4",
           "--image_size", "16", "--num_train", "24", "--num_val", "4", "--batch_size", "2", "--grad_accum", "2",
           "--sampling_changing_rate", "0.1", "--lr", "1e-3", "--num_workers", "0", "--log_every", "2",
           "--amp", "none", "--device", "cpu", "--checkpoint_every", "100"]


def run(run_dir, *flags):
    return train_script.main(OPENSTL + ["--run_dir", str(run_dir), *map(str, flags)])


def latest(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def test_step_loss_is_openstls_with_the_same_weights_frames_and_mask():
    cfg = parse_config(OPENSTL)
    torch.manual_seed(0)
    ours = model_from_config(vars(cfg) | {"in_chan": 1}, backend="torch").double()
    args = SimpleNamespace(in_shape=(10, 1, 16, 16), patch_size=4, filter_size=3, stride=1, layer_norm=0,
                           pre_seq_length=10, aft_seq_length=10, reverse_scheduled_sampling=0)
    theirs = ref.ConvLSTM_Model(2, [4, 4], args).double()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    objective = make_objective(cfg, (1, 16, 16), rank=0)
    batch = torch.rand(2, 20, 1, 16, 16, dtype=torch.float64)  # --batch_size 2
    mask = objective.masks(step=3, count=1, device="cpu")[0]
    assert 0 < mask.sum() < mask.numel()  # some true frames, some of the model's own: both paths count
    with default_dtype(torch.float64):  # OpenSTL's zero state is in the default dtype
        _, expected = theirs(ref.reshape_patch(batch.permute(0, 1, 3, 4, 2), 4), mask.double())
    loss = objective(ours, batch, mask)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=0)
    loss.backward()
    expected.backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_masks_follow_openstls_schedule_and_depend_on_step_and_rank_alone():
    args = SimpleNamespace(in_shape=(10, 1, 16, 16), patch_size=4, aft_seq_length=10, scheduled_sampling=1,
                           sampling_stop_iter=3, sampling_changing_rate=0.25, device="cpu")
    cfg = parse_config(OPENSTL + ["--sampling_changing_rate", "0.25", "--sampling_stop_iter", "3"])
    objective, their_eta = OpenSTLObjective(cfg, (1, 16, 16), rank=0), 1.0
    for step in range(5):
        masks = objective.masks(step, count=2, device="cpu")
        their_eta, their_mask = ref.schedule_sampling(their_eta, step, 4, args)
        assert objective.eta == their_eta  # 0.75, 0.5, 0.25, then 0 from sampling_stop_iter
        mask = torch.cat(masks)
        assert [m.shape[0] for m in masks] == [2, 2] and mask.shape == their_mask.shape == (4, 9, 4, 4, 16)
        per_frame = mask.flatten(2)
        assert mask.dtype == torch.float32 and ((mask == 0) | (mask == 1)).all()
        assert torch.equal(per_frame.amax(2), per_frame.amin(2))  # one decision per (sequence, step)
    assert objective.eta == 0 and mask.sum() == 0
    again = OpenSTLObjective(cfg, (1, 16, 16), rank=0)
    other_rank = OpenSTLObjective(cfg, (1, 16, 16), rank=1)
    big = dict(count=64, device="cpu")
    assert torch.equal(again.masks(0, **big)[5], OpenSTLObjective(cfg, (1, 16, 16), 0).masks(0, **big)[5])
    assert not torch.equal(torch.cat(again.masks(1, **big)), torch.cat(other_rank.masks(1, **big)))
    reverse = OpenSTLObjective(parse_config(OPENSTL + ["--reverse_scheduled_sampling"]), (1, 16, 16), rank=0)
    assert reverse.masks(0, count=1, device="cpu")[0].shape == (2, 18, 4, 4, 16)  # pre + aft - 2 steps
    off = OpenSTLObjective(parse_config(OPENSTL + ["--scheduled_sampling", "False"]), (1, 16, 16), rank=0)
    assert off.masks(0, count=1, device="cpu")[0].sum() == 0


def test_resume_after_sigterm_ends_at_the_uninterrupted_weights_and_eta(tmp_path, monkeypatch, capsys):
    assert run(tmp_path / "whole", "--max_steps", 8) == 0
    with monkeypatch.context() as patch:
        patch.setenv("CONVLSTM_FAULT_KILL", "0:3:SIGTERM")  # stops after step 4, mid-epoch
        assert run(tmp_path / "parts", "--max_steps", 8) == 143
    assert latest(tmp_path / "parts")["objective"]["eta"] == pytest.approx(0.6)
    capsys.readouterr()
    assert train_script.main(["--run_dir", str(tmp_path / "parts"), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resumed from step 4" in err and "sampling eta 0.200" in err
    whole, parts = latest(tmp_path / "whole"), latest(tmp_path / "parts")
    assert whole["step"] == parts["step"] == 8 and whole["objective"] == parts["objective"]
    assert_same_weights(whole["model"], parts["model"])
    assert parts["config"]["model"] == "openstl_convlstm" and "conv_last.weight" in parts["model"]
    assert (tmp_path / "parts" / "predictions.png").stat().st_size > 0


def test_ddp_trains_openstls_model_with_its_unused_convolutions(tmp_path, monkeypatch):
    """conv_o and the cells' conv_last never get a gradient: DDP needs find_unused_parameters (without it the
    second step fails: 'Expected to have finished reduction in the prior iteration')."""
    single_process_group(monkeypatch)
    assert run(tmp_path / "run", "--max_steps", 3) == 0
    state = latest(tmp_path / "run")
    torch.manual_seed(0)
    initial = model_from_config(state["config"], frame_shape=(1, 16, 16)).state_dict()
    assert state["step"] == 3
    assert torch.equal(state["model"]["cell_list.0.conv_o.0.weight"], initial["cell_list.0.conv_o.0.weight"])
    assert not torch.equal(state["model"]["cell_list.0.conv_x.0.weight"], initial["cell_list.0.conv_x.0.weight"])


def test_preset_gives_openstls_recipe_under_the_flags_and_config_file(tmp_path):
    cfg = parse_config(["--preset", "convlstm_s"])
    assert (cfg.model, cfg.n_hidden_dim, cfg.num_layers, cfg.kernel_size, cfg.patch_size, cfg.image_size) == \
           ("openstl_convlstm", 128, 4, 5, 4, 64)
    assert (cfg.lr, cfg.batch_size, cfg.lr_schedule, cfg.epochs, cfg.beta_2, cfg.onecycle_final_div) == \
           (5e-4, 16, "onecycle", 200, 0.999, 1e4)
    assert (cfg.scheduled_sampling, cfg.sampling_stop_iter, cfg.sampling_changing_rate) == (True, 50000, 2e-5)
    assert parse_config(["--preset", "convlstm_l"]).n_hidden_dim == 192
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "convlstm_l", "lr": 1e-3}))
    cfg = parse_config(["--config", str(path), "--batch_size", "4"])
    assert (cfg.n_hidden_dim, cfg.lr, cfg.batch_size, cfg.lr_schedule) == (192, 1e-3, 4, "onecycle")


def test_a_preset_run_resumes_with_its_saved_values(tmp_path, capsys):
    flags = ["--preset", "convlstm_s", "--n_hidden_dim", "4", "--num_layers", "1", "--image_size", "16",
             "--num_train", "8", "--num_val", "2", "--batch_size", "2", "--max_steps", "2", "--num_workers", "0",
             "--device", "cpu", "--run_dir", str(tmp_path / "run")]
    assert train_script.main(flags) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["preset"], saved["kernel_size"], saved["lr_schedule"], saved["n_hidden_dim"]) == \
           ("convlstm_s", 5, "onecycle", 4)
    capsys.readouterr()
    assert train_script.main(["--run_dir", str(tmp_path / "run"), "--resume", "--max_steps", "3"]) == 0
    assert "flags changed since the checkpoint: max_steps 2 -> 3" in capsys.readouterr().err
    assert latest(tmp_path / "run")["config"]["n_hidden_dim"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--patch_size", "2"], "--patch_size 2: applies to --model openstl_convlstm only"),
    (["--preset", "convlstm_s", "--model", "tutorial"], "--preset 'convlstm_s': is the recipe of --model openstl_convlstm"),
    (["--model", "openstl_convlstm", "--image_size", "30"], "--patch_size 4: must divide --image_size 30"),
    (["--model", "openstl_convlstm", "--peephole"], "--peephole True: applies to --model tutorial only"),
    (["--model", "openstl_convlstm", "--cell_output", "g", "--backend", "triton"],
     "--cell_output 'g': g runs on --backend torch or auto only"),
    (["--model", "openstl_convlstm", "--r_sampling_step_1", "9", "--r_sampling_step_2", "3"],
     "--r_sampling_step_1 9: must be in [0, --r_sampling_step_2 3]"),
    (["--model", "openstl"], "argument --model: invalid choice: 'openstl'"),
])
def test_bad_openstl_flags_exit_with_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        train_script.main(flags)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_frames_that_do_not_divide_into_patches_stop_before_anything_is_written(tmp_path, capsys):
    frames = torch.rand(4, 20, 1, 18, 18)
    code = train_script.main(OPENSTL + ["--run_dir", str(tmp_path / "run")], train_dataset=frames,
                             val_dataset=frames)
    assert code == 1 and "frames of 18x18 do not divide into --patch_size 4 patches" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_init_weights_fine_tunes_from_openstls_own_checkpoint_and_refuses_weights_that_do_not_fit(tmp_path, capsys):
    assert run(tmp_path / "trained", "--max_steps", 2) == 0
    weights = latest(tmp_path / "trained")["model"]
    released = tmp_path / "mmnist_convlstm.pth"
    torch.save({"state_dict": weights, "optimizer": {}, "epoch": 200}, released)  # OpenSTL v0.2.0's container
    capsys.readouterr()
    # At lr 1e-12 one Adam step moves each weight by about 1e-12: the run starts from the file's weights, which
    # are 2 steps at lr 1e-3 away from the seed's random ones.
    assert run(tmp_path / "tuned", "--max_steps", 1, "--lr", "1e-12", "--init_weights", released) == 0
    assert f"initial weights from {released} (openstl checkpoint, {len(weights)} tensors)" in capsys.readouterr().err
    tuned = latest(tmp_path / "tuned")["model"]
    for key in weights:
        torch.testing.assert_close(tuned[key], weights[key], rtol=0, atol=1e-9, msg=key)
    assert run(tmp_path / "wider", "--n_hidden_dim", 8, "--init_weights", released) == 1
    assert f"train.py: error: --init_weights: checkpoint {released}: weights do not fit the model: " \
           "cell_list.0.conv_x.0.weight is (16, 16, 3, 3), the model's is (32, 16, 3, 3)" in capsys.readouterr().err
    assert run(tmp_path / "missing", "--init_weights", tmp_path / "none.pt") == 1
    assert "train.py: error: --init_weights: " in capsys.readouterr().err
