"""The Quickstart's claim, checked on its own output: the model the README's first command trains beats both
baselines (the last input frame repeated, all zeros) on MSE, MAE and SSIM on the test split it was scored on.

CI runs the Quickstart block before pytest (.ci/run), so the metrics.json its evaluate.py line wrote is there; run
from a checkout where nobody ran the Quickstart, this test skips and says so."""
import json
import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LOWER_IS_BETTER, HIGHER_IS_BETTER = ("mse", "mae"), ("ssim",)


def quickstart_commands():
    found = re.search(r"<!-- quickstart -->\s*```[a-z]*\n(.*?)```", README, flags=re.S)
    assert found, "README.md has no fenced block after <!-- quickstart -->"
    lines = found.group(1).replace("\\\n", " ").splitlines()  # a line ending in a backslash goes on
    return [shlex.split(part) for line in lines for part in line.split("&&")]


def flag(words, name):
    return words[words.index(name) + 1]


def test_the_quickstart_trains_then_scores_its_best_checkpoint_on_the_test_split():
    commands = quickstart_commands()
    train = next(words for words in commands if words[:2] == ["python", "train.py"])
    evaluate = next(words for words in commands if words[:2] == ["python", "evaluate.py"])
    assert flag(evaluate, "--checkpoint") == f"{flag(train, '--run_dir')}/checkpoints/best.pt"
    assert "--data" not in evaluate  # the generated Moving MNIST test split, never the validation sequences


def test_the_quickstart_model_beats_both_baselines_on_mse_mae_and_ssim():
    evaluate = next(words for words in quickstart_commands() if words[:2] == ["python", "evaluate.py"])
    path = ROOT / flag(evaluate, "--out_dir") / "metrics.json"
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI runs the Quickstart before pytest")
        pytest.skip(f"run the README's Quickstart first: {path} is not there")
    results = json.loads(path.read_text())
    assert results["num_sequences"] >= 1000, results["num_sequences"]
    for baseline in ("last_frame", "zeros"):
        theirs = results["baselines"][baseline]
        for metric in LOWER_IS_BETTER:
            assert results[metric] < theirs[metric], (metric, baseline, results[metric], theirs[metric])
        for metric in HIGHER_IS_BETTER:
            assert results[metric] > theirs[metric], (metric, baseline, results[metric], theirs[metric])
