"""train.py under attack (issue 16): every fault ends in progress or in one clear line, never in a hang or a lost run.

In-process runs use test_train's tiny configuration (n_hidden_dim 4, 16x16 frames, batch 4, CPU); the signal tests
start `python train.py` as a subprocess, as a scheduler would.
"""
import contextlib
import signal

import pytest
import torch
from torch.utils.data import DataLoader

from convlstm.training.distributed import ResumableSampler, SetupError, start_epoch
from test_train import run, train_script

TIMEOUT_S = 30


@contextlib.contextmanager
def deadline(seconds=TIMEOUT_S):
    """Fail the test, instead of hanging the suite, when the block runs longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: train.py hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def latest(run_dir):
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


# A checkpoint 24 sequences into an epoch of 48 (step 6 of 12 per epoch), resumed on an epoch that ends before that
# position, exactly at it, or 2 sequences after it (less than one batch of 4).
@pytest.mark.parametrize("num_train", [12, 24, 26], ids=["epoch-ends-before", "epoch-ends-at", "less-than-a-batch"])
def test_resume_past_the_end_of_a_smaller_epoch_starts_the_next_epoch(tmp_path, capsys, num_train):
    run_dir = tmp_path / "run"
    assert run(run_dir, "--num_train", 48, "--max_steps", 6) == 0
    assert latest(run_dir)["sampler"] == {"epoch": 0, "samples_seen": 24}
    capsys.readouterr()
    with deadline():
        assert run(run_dir, "--num_train", num_train, "--max_steps", 9, "--resume") == 0
    err = capsys.readouterr().err
    assert f"epoch 0 holds no further batch of 4 after the checkpoint's 24 sequences ({num_train} per epoch now): " \
           "starting epoch 1" in err
    state = latest(run_dir)
    assert state["step"] == 9 and state["sampler"]["epoch"] >= 1


def test_a_position_the_processes_cannot_share_is_one_line():
    sampler = ResumableSampler(range(12), num_replicas=2, rank=0, seed=0)
    loader = DataLoader(range(12), batch_size=2, sampler=sampler, drop_last=True)
    with pytest.raises(SetupError, match="2 processes cannot share evenly: resume with a process count that divides 3"):
        start_epoch(sampler, loader, 0, 3, print)


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_corrected_rerun(tmp_path, monkeypatch,
                                                                                            capsys):
    run_dir = tmp_path / "run"
    for bad in (["--image_size", 6], ["--data", tmp_path / "missing.npy"]):
        assert run(run_dir, "--max_steps", 2, *bad) == 1
        assert not run_dir.exists()  # the data is checked before anything is written
    # A failure after the start wrote config.json and train.log, before any checkpoint: a loss that is NaN at once.
    build = train_script.model_from_config

    def model_with_nan_output(config):
        model = build(config)
        plain_forward = model.forward
        model.forward = lambda *args, **kwargs: plain_forward(*args, **kwargs) * float("nan")
        return model

    with monkeypatch.context() as patch:
        patch.setattr(train_script, "model_from_config", model_with_nan_output)
        assert run(run_dir, "--max_steps", 2) == 1
    assert (run_dir / "config.json").exists() and not (run_dir / "checkpoints").exists()
    capsys.readouterr()
    assert run(run_dir, "--max_steps", 2) == 0, capsys.readouterr().err
    assert latest(run_dir)["step"] == 2
