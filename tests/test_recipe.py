"""The training recipe of issue 15, point 2: learning-rate schedules, gradient accumulation, a --config file, --resume
with the saved config, and --help in groups.

In-process runs use test_train's tiny configuration (n_hidden_dim 4, 16x16 frames, 24 sequences, CPU).
"""
import dataclasses
import json
import math
import re
import warnings

import pytest
import torch

from convlstm.training.amp import Precision
from convlstm.training.config import GROUPS, Config, parse_config
from convlstm.training.schedule import build_scheduler
from helpers import assert_same_weights, nan_output_models, run, single_process_group, train_script


def latest(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def one_parameter_adam(lr):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=lr, betas=(0.9, 0.98))


def schedule_values(cfg, total_steps, scheduler_of=build_scheduler):
    """[(lr, beta_1)] of optimizer steps 0 .. total_steps - 1 (stepping as train.py does, after each step)."""
    optimizer = one_parameter_adam(cfg.lr)
    scheduler = scheduler_of(optimizer, cfg, total_steps)
    values = []
    for _ in range(total_steps):
        values.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
        optimizer.step()
        scheduler.step()
    return values


def nanogpt_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py get_lr, transcribed."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_cosine_warms_up_then_decays_to_min_lr_as_nanogpt_and_constant_stays_lr():
    cfg = parse_config(["--lr_schedule", "cosine", "--lr", "1e-3", "--warmup_steps", "3", "--min_lr", "1e-4"])
    lrs = [lr for lr, _ in schedule_values(cfg, 12)]
    for step in (0, 1, 2, 3, 4, 7, 11):
        assert lrs[step] == pytest.approx(nanogpt_lr(step, 1e-3, 3, 12, 1e-4), rel=1e-12, abs=0), step
    assert lrs[2] == pytest.approx(1e-3 * 3 / 4) and lrs[3] == pytest.approx(1e-3)  # the peak right after warmup
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] > 1e-4  # the last step's is just above min_lr

    assert {lr for lr, _ in schedule_values(parse_config(["--lr", "3e-4"]), 7)} == {3e-4}  # bit for bit: today's
    warm = [lr for lr, _ in schedule_values(parse_config(["--lr", "3e-4", "--warmup_steps", "2"]), 5)]
    assert warm == pytest.approx([1e-4, 2e-4, 3e-4, 3e-4, 3e-4], rel=1e-12)


def test_onecycle_is_torchs_one_cycle_lr_with_openstls_final_div():
    cfg = parse_config(["--lr_schedule", "onecycle", "--lr", "2e-3"])
    assert cfg.onecycle_final_div == 1e4

    def torch_one_cycle(optimizer, cfg, total_steps):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=total_steps,
                                                   final_div_factor=1e4)

    ours = schedule_values(cfg, 20)
    assert ours == schedule_values(cfg, 20, torch_one_cycle)  # lr and Adam's beta_1, bit for bit
    lrs = [lr for lr, _ in ours]
    assert lrs[0] == pytest.approx(2e-3 / 25) and max(lrs) == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(2e-3 / 25 / 1e4, rel=0.05)
    assert ours[0][1] == 0.95 and min(beta for _, beta in ours) == pytest.approx(0.85)
    other = schedule_values(parse_config(["--lr_schedule", "onecycle", "--lr", "2e-3", "--onecycle_final_div", "10"]),
                            20)
    assert other[-1][0] == pytest.approx(2e-3 / 25 / 10, rel=0.05)


@pytest.mark.parametrize("flags", [[], ["--lr_schedule", "cosine", "--warmup_steps", "2", "--min_lr", "1e-5"],
                                   ["--lr_schedule", "onecycle"]], ids=["constant", "cosine", "onecycle"])
def test_a_schedule_placed_after_k_steps_continues_as_one_stepped_k_times(flags):
    """What a resume does: a fresh schedule sets its keys in the param groups, then one is built at step k."""
    cfg, total, k = parse_config(["--lr", "1e-3", *flags]), 10, 4
    whole = schedule_values(cfg, total)
    optimizer = one_parameter_adam(cfg.lr)
    build_scheduler(optimizer, cfg, total)
    scheduler = build_scheduler(optimizer, cfg, total, done_steps=k)
    rest = []
    for _ in range(k, total):
        rest.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
        optimizer.step()
        scheduler.step()
    assert rest == whole[k:]


def test_grad_accum_2_of_batch_2_trains_as_batch_4(tmp_path, capsys):
    """The same sequences per optimizer step, the loss averaged over all of them: float32 weights within a few ulps,
    and Adam's moments (which would show a gradient N times too large, to which Adam's step is blind) as close."""
    steps = ["--max_steps", 4, "--backend", "torch"]
    assert run(tmp_path / "batch4", *steps, "--batch_size", 4) == 0
    assert run(tmp_path / "accum2", *steps, "--batch_size", 2, "--grad_accum", 2) == 0
    assert "global batch 4 (2 per process x 2 accumulated)" in capsys.readouterr().err
    whole, accumulated = latest(tmp_path / "batch4"), latest(tmp_path / "accum2")
    assert whole["step"] == accumulated["step"] == 4
    assert whole["sampler"] == accumulated["sampler"] == {"epoch": 0, "samples_seen": 16}
    for key in whole["model"]:
        torch.testing.assert_close(accumulated["model"][key], whole["model"][key], rtol=0, atol=1e-7)
    for a, b in zip(whole["optimizer"]["state"].values(), accumulated["optimizer"]["state"].values()):
        torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=1e-4, atol=1e-12)


def test_ddp_all_reduces_once_per_optimizer_step(tmp_path, monkeypatch):
    """Under DDP the first grad_accum - 1 backward passes run in no_sync(): one all-reduce per optimizer step."""
    single_process_group(monkeypatch)
    reduced = []  # one entry per backward that all-reduced (its first bucket)
    plain_ddp = train_script.DistributedDataParallel

    def counting_ddp(module, **kwargs):
        ddp = plain_ddp(module, **kwargs)

        def hook(state, bucket):
            if bucket.index() == 0:
                reduced.append(1)
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        ddp.register_comm_hook(None, hook)
        return ddp

    monkeypatch.setattr(train_script, "DistributedDataParallel", counting_ddp)
    assert run(tmp_path / "run", "--max_steps", 2, "--batch_size", 2, "--grad_accum", 3) == 0
    assert len(reduced) == 2 and latest(tmp_path / "run")["sampler"]["samples_seen"] == 12


def test_fp16_accumulation_unscales_the_sum_before_clipping():
    """Two micro-batches under fp16 (each backward scaled by 2^16): the clipped update is that of their whole batch."""
    def update(amp, halves, grad_clip):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 1))
        before = [p.detach().clone() for p in model.parameters()]
        precision, optimizer = Precision(amp, torch.device("cpu")), torch.optim.SGD(model.parameters(), lr=1.0)
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        for part in x.chunk(halves):
            with precision.autocast():
                out = model(part)
            precision.backward(1e-3 * (out.float() - 1).pow(2).mean() / halves)
        grad_norm = precision.step(optimizer, model.parameters(), grad_clip)
        moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
        return grad_norm.item(), moved, precision.scaler.get_scale()

    fp32_norm, fp32_update, _ = update("none", 1, 0.0)
    _, fp32_accumulated, _ = update("none", 2, 0.0)
    torch.testing.assert_close(fp32_accumulated, fp32_update, rtol=1e-5, atol=1e-9)
    fp16_norm, fp16_update, scale = update("fp16", 2, 0.5 * fp32_norm)
    assert scale == 2.0 ** 16
    assert fp16_norm == pytest.approx(fp32_norm, rel=1e-2)
    assert fp16_update.norm().item() == pytest.approx(0.5 * fp32_norm, rel=1e-2)


def test_fp16_steps_the_scaler_skips_still_advance_the_schedule(tmp_path, monkeypatch):
    nan_output_models(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(tmp_path / "run", "--amp", "fp16", "--max_steps", 3, "--max_skipped_steps", 0, "--lr_schedule",
                   "cosine") == 0
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    state = latest(tmp_path / "run")
    assert state["step"] == state["scheduler"]["last_epoch"] == 3
    assert state["scaler"]["scale"] == 2.0 ** 13  # three skipped steps halved it three times


# 24 sequences, 2 per micro-batch, 2 micro-batches per step: 6 steps per epoch; 8 steps cross into the second.
RECIPE = ["--batch_size", 2, "--grad_accum", 2, "--max_steps", 8, "--lr", "1e-3", "--checkpoint_every", 100]


@pytest.mark.parametrize("schedule", [["--lr_schedule", "cosine", "--warmup_steps", 2, "--min_lr", "1e-5"],
                                      ["--lr_schedule", "onecycle"]], ids=["cosine", "onecycle"])
def test_resume_with_only_run_dir_and_resume_ends_at_the_uninterrupted_weights(tmp_path, monkeypatch, capsys,
                                                                              schedule):
    assert run(tmp_path / "whole", *RECIPE, *schedule) == 0
    with monkeypatch.context() as patch:
        patch.setenv("CONVLSTM_FAULT_KILL", "0:3:SIGTERM")  # SIGTERM before step 4: stops after it, mid-epoch
        assert run(tmp_path / "parts", *RECIPE, *schedule) == 143
    assert latest(tmp_path / "parts")["sampler"] == {"epoch": 0, "samples_seen": 16}
    capsys.readouterr()
    assert train_script.main(["--run_dir", str(tmp_path / "parts"), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resumed from step 4 (epoch 0, 16 sequences into it)" in err and "flags changed" not in err
    whole, parts = latest(tmp_path / "whole"), latest(tmp_path / "parts")
    assert whole["step"] == parts["step"] == 8
    assert_same_weights(whole["model"], parts["model"])
    for a, b in zip(whole["optimizer"]["state"].values(), parts["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["optimizer"]["param_groups"] == parts["optimizer"]["param_groups"]  # lr, betas, the schedule's keys
    # _step_count counts step() calls since the scheduler was built (for torch's warning about their order).
    assert {**whole["scheduler"], "_step_count": 0} == {**parts["scheduler"], "_step_count": 0}
    assert {**whole["config"], "run_dir": None} == {**parts["config"], "run_dir": None, "resume": False}


def test_typed_flags_override_the_saved_config_and_defaults_do_not(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(run_dir, "--max_steps", 2, "--lr", "3e-4", "--checkpoint_every", 1) == 0
    capsys.readouterr()
    # --lr left out: the saved 3e-4 stays (argparse's default 1e-4 must not replace it); device, sizes likewise.
    assert train_script.main(["--run_dir", str(run_dir), "--resume", "--max_steps", "3"]) == 0
    assert "flags changed since the checkpoint: max_steps 2 -> 3" in capsys.readouterr().err
    state = latest(run_dir)
    assert state["config"]["lr"] == 3e-4 and state["config"]["n_hidden_dim"] == 4 and state["step"] == 3
    # --lr typed, even at its default value, overrides the saved value and takes effect from the next step.
    config_file = tmp_path / "more.json"
    config_file.write_text(json.dumps({"max_steps": 5, "log_every": 1}))
    assert train_script.main(["--run_dir", str(run_dir), "--resume", "--config", str(config_file), "--lr", "1e-4"]) == 0
    err = capsys.readouterr().err
    assert "flags changed since the checkpoint: lr 0.0003 -> 0.0001, max_steps 3 -> 5, log_every 2 -> 1" in err
    state = latest(run_dir)
    assert state["step"] == 5 and state["config"]["lr"] == 1e-4
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4


def test_changing_the_model_on_resume_is_refused_and_leaves_the_run_as_it_was(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(run_dir, "--max_steps", 2) == 0
    before = {path.name: path.read_bytes() for path in [run_dir / "config.json", *(run_dir / "checkpoints").iterdir()]}
    capsys.readouterr()
    assert train_script.main(["--run_dir", str(run_dir), "--resume", "--n_hidden_dim", "8"]) == 1
    assert "the checkpoint's model was built with --n_hidden_dim 4 (this run: 8): pass the same values to resume" \
           in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in [run_dir / "config.json", *(run_dir / "checkpoints").iterdir()]} \
           == before


def test_config_file_gives_values_and_typed_flags_override_them(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lr": 3e-4, "batch_size": 2, "lr_schedule": "cosine", "warmup_steps": 100,
                                "min_lr": 0, "peephole": True, "num_val": None, "run_dir": "runs/x"}))
    cfg = parse_config(["--config", str(path), "--lr", "1e-4", "--n_in", "5"])
    assert (cfg.lr, cfg.batch_size, cfg.lr_schedule, cfg.warmup_steps, cfg.peephole, cfg.n_steps_past) == \
           (1e-4, 2, "cosine", 100, True, 5)
    assert isinstance(cfg.min_lr, float) and cfg.run_dir == "runs/x" and cfg.epochs == Config.epochs


@pytest.mark.parametrize("content, message", [
    ({"lr": 1e-3, "learning_rate": 1e-3}, "unknown key 'learning_rate'"),
    ({"batch_size": "4"}, 'batch_size must be int, got "4"'),
    ({"batch_size": 4.5}, "batch_size must be int, got 4.5"),
    ({"peephole": 1}, "peephole must be bool, got 1"),
    ({"epochs": None}, "epochs must be int, got null"),
    ({"amp": "fp8"}, "amp 'fp8' is not one of auto, none, bf16, fp16"),
    ([1, 2], "expected one JSON object"),
    ("{not json", "not JSON"),
    ({"lr": 2.0}, "--lr 2.0: must be at most 1.0"),
], ids=["unknown-key", "string-for-int", "float-for-int", "int-for-bool", "null-for-int", "bad-choice", "a-list",
        "not-json", "lr-too-large"])
def test_config_file_errors_exit_2_naming_the_key(tmp_path, capsys, content, message):
    path = tmp_path / "run.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and (str(path) in err or message.startswith("--lr"))


@pytest.mark.parametrize("flags, message", [
    (["--lr_schedule", "linear"], "argument --lr_schedule: invalid choice: 'linear'"),
    (["--grad_accum", "0"], "--grad_accum 0: must be at least 1"),
    (["--lr_schedule", "cosine", "--min_lr", "1e-3"], "--min_lr 0.001: must be in [0, --lr]"),
    (["--lr_schedule", "onecycle", "--warmup_steps", "10"], "--warmup_steps 10: onecycle warms up over its first 30%"),
    (["--onecycle_final_div", "0"], "--onecycle_final_div 0.0: must be positive"),
    (["--config", "/no/such/run.json"], "--config /no/such/run.json: cannot read it"),
], ids=["unknown-schedule", "zero-accum", "min-lr-above-lr", "onecycle-warmup", "zero-final-div", "missing-file"])
def test_bad_recipe_flags_exit_with_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_flag_once_in_its_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    starts = [out.index(f"\n{title}:\n") for title in GROUPS]
    assert starts == sorted(starts) and list(GROUPS) == ["data", "model", "optimisation", "run", "distributed",
                                                          "logging"]
    sections = dict(zip(GROUPS, (out[a:b] for a, b in zip(starts, starts[1:] + [len(out)]))))
    for field in dataclasses.fields(Config):
        flag = re.compile(rf"\n  --{field.name} (\[|{{|{field.name.upper()})")  # --lr LR, --amp {...}, --compile [...]
        assert flag.search(sections[field.metadata["group"]]) and len(flag.findall(out)) == 1, field.name
    assert "\n  --config FILE.json" in sections["run"]
