"""Checkpoints: one dict with everything a run needs to continue, written atomically, read back with weights_only.

Layout: <run_dir>/checkpoints/latest.pt (always the newest complete checkpoint), best.pt (lowest validation loss) and
step_<N>.pt (the last few). A checkpoint is a dict:

    format     FORMAT, the version of this layout (absent: 0, the files written before it had a number)
    model      state_dict of the plain model (no DDP "module." or torch.compile "_orig_mod." prefix)
    optimizer  Adam's state_dict            scaler   GradScaler's state_dict (empty when not fp16)
    scheduler  the learning-rate scheduler's state_dict (convlstm.training.schedule); its last_epoch is `step`
    step       optimizer steps taken        epoch    epoch the next step belongs to
    sampler    {"epoch", "samples_seen"}: where in that epoch's global permutation the next optimizer step's
               sequences start (samples_seen counts sequences: batch_size * processes * grad_accum per step)
    config     the resolved Config as a plain dict (see convlstm.training.config)
    rng        torch / numpy / python / cuda RNG states as tensors and plain values
    val_loss   validation MSE per pixel at this point, or None if none was measured since the last epoch
    val_metrics  the validation metrics of convlstm.evaluation.metrics at this point ({name: overall mean}), or None
    best_val_loss  lowest validation MSE so far (None before the first validation)

Every value is a tensor or a plain Python type, so `torch.load(path, weights_only=True)` reads it.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import random
import re

import numpy as np
import torch

from .atomic import WriteError, describe, is_partial, write_file

FORMAT = 1  # 1: the "format" key itself; 0 (no key) reads the same
# The keys above, which save_checkpoint requires; a resume needs the first five (older files lack some of the rest).
TRAINING_KEYS = ("model", "optimizer", "step", "config", "sampler", "scaler", "scheduler", "objective", "epoch",
                 "frame_shape", "rng", "val_loss", "val_metrics", "best_val_loss")
LATEST = "latest.pt"
BEST = "best.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or used; the message names the file."""


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def rng_state() -> dict:
    """This process's RNG states, as types weights_only loading accepts."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomic(path: str, payload: bytes) -> None:
    """Write `payload` to `path` atomically and durably (convlstm.atomic.write_file with fsync): readers see the old
    file or the new one. A failure is a CheckpointError of one line naming `path`."""
    try:
        write_file(path, lambda handle: handle.write(payload), fsync=True)
    except WriteError as error:
        raise CheckpointError(str(error)) from error


def _make_dir(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise CheckpointError(describe(error, directory)) from error


def sweep_temp_files(run_dir: str) -> list[str]:
    """Remove the temp files that writes cut short (a killed process, a full disk) left in run_dir and its
    checkpoints; returns their paths. Only names with convlstm.atomic's mark: a user's `notes.tmp.png` stays. Call
    only while holding the run_dir's lock: a live writer's are in use."""
    removed = []
    for directory in (run_dir, checkpoint_dir(run_dir)):
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if is_partial(name) and os.path.isfile(path):
                    with contextlib.suppress(OSError):  # one it cannot remove stays; it blocks nothing
                        os.remove(path)
                        removed.append(path)
    return removed


def is_checkpoint_name(name: str) -> bool:
    """Whether the run writes a checkpoint under `name` (latest.pt, best.pt, step_<N>.pt)."""
    return name in (LATEST, BEST) or bool(_STEP_FILE.match(name))


def step_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(N, path) of the step_<N>.pt files in `directory` (files only: a folder of that name is not one), newest name
    first. N is what the name says; the step a file holds is its "step" (a copied file may disagree)."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), os.path.join(directory, name))
             for name in os.listdir(directory) if (m := _STEP_FILE.match(name))]
    return sorted(((n, path) for n, path in found if os.path.isfile(path)), reverse=True)


def _held_step(path: str):
    """The "step" a checkpoint file holds (read through a memory map: no tensor data), or None if unreadable."""
    try:
        state = read_checkpoint(path, mmap=True)
    except CheckpointError:
        return None
    step = state.get("step") if isinstance(state, dict) else None
    return step if isinstance(step, int) else None


def save_checkpoint(directory: str, state: dict, keep: int, is_best: bool) -> None:
    """Write step_<N>.pt, then latest.pt (and best.pt when `is_best`), each atomically; keep the newest `keep`
    step files. Call on rank 0 only; the caller's barrier afterwards tells the other ranks it is complete. A write
    that fails (a full disk) raises CheckpointError and leaves the complete files as they were."""
    missing = [key for key in TRAINING_KEYS if key not in state]
    assert not missing, f"a checkpoint needs {missing}"  # the caller's bug, not the user's
    _make_dir(directory)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    payload = buffer.getvalue()
    _write_atomic(os.path.join(directory, f"step_{state['step']}.pt"), payload)
    _write_atomic(os.path.join(directory, LATEST), payload)
    if is_best:
        _write_atomic(os.path.join(directory, BEST), payload)
    # Pruned: only files holding the step their name says (what save_checkpoint writes); a copied or foreign
    # step_<N>.pt is neither counted nor removed.
    ours = [path for n, path in step_checkpoints(directory) if _held_step(path) == n]
    for old in ours[keep:]:
        with contextlib.suppress(OSError):  # one that cannot go stays: it costs disk, nothing else
            os.remove(old)


def read_checkpoint(path: str, mmap: bool = False):
    """torch.load(path, weights_only=True) onto the CPU, for train.py's resume and evaluate.py alike; anything that
    stops it is a CheckpointError of one line that names the file and the cause. mmap: tensors mapped from the file,
    not read (a file of torch's older format is read whole)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist" if not os.path.exists(path) else
                              f"checkpoint {path} is not a file")
    try:
        state = None
        if mmap:
            with contextlib.suppress(RuntimeError):  # "mmap can only be used with files saved with ... zipfile"
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state = state if state is not None else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file; all mean "unreadable"
        detail = _load_error_detail(error)
        if "GLOBAL" in detail:  # a class or function to import: refused by the weights-only unpickler
            raise CheckpointError(f"refusing checkpoint {path}: it holds more than tensors and plain values, and "
                                  f"checkpoints are only ever loaded with weights_only=True ({detail})") from error
        raise CheckpointError(f"checkpoint {path} is unreadable ({detail})") from error
    version = state.get("format", 0) if isinstance(state, dict) and "config" in state else 0  # train.py's files
    if not isinstance(version, int) or version > FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {version!r}, newer than this convlstm's {FORMAT}: "
                              "update convlstm to read it")
    return state


def _load_error_detail(error: Exception) -> str:
    """The informative line of a torch.load error, without its boilerplate (advice, links)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    # torch 2.13 puts "(1) In PyTorch 2.6, we changed ..." first; the refused class is on a later line.
    useful = [line for line in useful if "GLOBAL" in line] or useful
    return f"{type(error).__name__}: {useful[0]}" if useful else type(error).__name__


# A resume reads its checkpoint once per process: the config when the flags are parsed (saved_config), the whole
# state after the run_dir is locked (find_resume_checkpoint on rank 0, load_checkpoint elsewhere). A read is kept by
# the file's identity (a file replaced in between is read again) until the next read of it takes it: training then
# updates its tensors in place (Adam's moments alias them), so no state is handed out twice.
_LOADED = collections.OrderedDict()
_LOADED_KEPT = 8


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """A training checkpoint to resume from (read_checkpoint, then the keys a resume needs and an integer step).
    The second load of an unchanged file takes the first's state instead of reading it again."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key in _LOADED:
        return _LOADED.pop(key)
    state = _checked_training_state(read_checkpoint(path, mmap), path)
    if key is not None:
        _LOADED[key] = state
        while len(_LOADED) > _LOADED_KEPT:
            _LOADED.popitem(last=False)
    return state


def _checked_training_state(state, path: str) -> dict:
    missing = [key for key in TRAINING_KEYS[:5] if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this project (missing {missing})")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise CheckpointError(f"checkpoint {path}: its step {state['step']!r} is not a step count")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint {path}: its config is a {type(state['config']).__name__}, not a dict")
    return state


def saved_config(run_dir: str) -> dict | None:
    """The config saved in the checkpoint that a --resume of `run_dir` continues from (find_resume_checkpoint, read
    before the run_dir's lock is taken: train.py's start names any unreadable file), or None when there is none yet."""
    found = find_resume_checkpoint(checkpoint_dir(run_dir), warn=lambda message: None)
    return found[1]["config"] if found else None


def find_resume_checkpoint(directory: str, warn) -> tuple[str, dict] | None:
    """(path, state) of the checkpoint in `directory` holding the highest step: latest.pt, unless a step_<N>.pt
    holds a later one (a write of latest.pt that failed after its step file was complete). Files are ordered by the
    step they hold, not the one their name says (a copied step_<N>.pt may disagree: said through `warn`); each is
    read through a memory map, and latest.pt wins a tie.

    Each unreadable file is reported through `warn` by name. Returns None when the directory holds no checkpoint at
    all; raises CheckpointError when there are checkpoints but none loads (never a silent fresh start).
    """
    latest_path = os.path.join(directory, LATEST)
    candidates = ([latest_path] if os.path.exists(latest_path) else []) + [path for _, path in
                                                                           step_checkpoints(directory)]
    if not candidates:
        return None
    problems, found = [], []
    for path in candidates:
        try:
            state = load_checkpoint(path, mmap=True)
        except CheckpointError as error:
            problems.append(str(error))
            warn(f"{error}; trying an older checkpoint")
            continue
        named = _STEP_FILE.match(os.path.basename(path))
        if named and int(named.group(1)) != state["step"]:
            warn(f"{path} holds step {state['step']}, not the {named.group(1)} its name says: checkpoints are "
                 "ordered by the step they hold")
        found.append((state["step"], path == latest_path, path, state))
    if not found:
        raise CheckpointError(f"no readable checkpoint in {directory}: " + "; ".join(problems)
                              + ". Move the directory away to start fresh.")
    step, _, path, state = max(found, key=lambda entry: entry[:2])
    if path != latest_path and os.path.exists(latest_path):
        warn(f"{latest_path} is behind {path} (step {step}): continuing from that")
    return path, state


# Written by rank 0 at the start of a torchrun launch: a restarted worker group (TORCHELASTIC_RESTART_COUNT > 0) of the
# same launch resumes on its own, while a new launch into a used run_dir still needs --resume.
ELASTIC_RUN_ID_FILE = "torchelastic_run_id"


def holds_run(run_dir: str) -> bool:
    """Whether `run_dir` holds a run: a checkpoint. A start that failed before its first checkpoint leaves config.json
    and train.log, which the corrected rerun overwrites and appends to."""
    directory = checkpoint_dir(run_dir)
    return os.path.isdir(directory) and any(name.endswith(".pt") and os.path.isfile(os.path.join(directory, name))
                                            for name in os.listdir(directory))


def is_restart_of_this_launch(run_dir: str, elastic_run_id: str | None, restarts: int) -> bool:
    if restarts <= 0 or not elastic_run_id:
        return False
    try:
        with open(os.path.join(run_dir, ELASTIC_RUN_ID_FILE)) as handle:
            return handle.read().strip() == elastic_run_id
    except FileNotFoundError:
        return False


def choose_start(run_dir: str, resume: bool, elastic_run_id: str | None, restarts: int, warn):
    """Decide how a run starts (call on rank 0). Returns (path, state) of the checkpoint to continue from, or None
    for a fresh start. Raises CheckpointError when the start would overwrite a run or when no checkpoint is readable.

    resume=True, or a torchrun restart of the launch that wrote the run_dir, continues from the newest readable
    checkpoint (None if there is none yet). Otherwise run_dir must not hold a run.
    """
    if not (resume or is_restart_of_this_launch(run_dir, elastic_run_id, restarts)):
        if holds_run(run_dir):
            raise CheckpointError(f"--run_dir {run_dir} already holds a run (checkpoints in "
                                  f"{checkpoint_dir(run_dir)}); pass --resume to continue it, or choose another "
                                  "--run_dir")
        return None
    return find_resume_checkpoint(checkpoint_dir(run_dir), warn)


def write_elastic_run_id(run_dir: str, elastic_run_id: str | None) -> None:
    if elastic_run_id:
        _make_dir(run_dir)
        _write_atomic(os.path.join(run_dir, ELASTIC_RUN_ID_FILE), elastic_run_id.encode())


def write_config(run_dir: str, config: dict) -> None:
    _make_dir(run_dir)
    _write_atomic(os.path.join(run_dir, "config.json"), (json.dumps(config, indent=2) + "\n").encode())


def check_weights(model, weights, path) -> None:
    """CheckpointError unless `weights` (a state_dict read from `path`) has the keys and shapes of `model`'s: one
    line naming the first few keys that differ."""
    expected = model.state_dict()
    problems = [f"missing {key}" for key in expected if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in expected]
    problems += [f"{key} is {_shape(weights[key])}, the model's is {tuple(value.shape)}"
                 for key, value in expected.items() if key in weights and _shape(weights[key]) != tuple(value.shape)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model: {'; '.join(problems[:3])}{more}")


def _shape(value):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def restore(state: dict, model, optimizer, scaler, objective, where: str) -> None:
    """Load a training checkpoint into the fresh model, optimizer, scaler and objective (each with load_state_dict;
    train.py's Precision as the scaler) and restore the RNG. The weights are checked against the model first (a saved
    config edited by hand: one line naming `where`, not a traceback). Adam's moments come from the checkpoint, its
    hyperparameters (lr, betas and the keys a schedule keeps in the param groups) stay those the fresh optimizer was
    given: the same values when nothing changed, and a --lr or --beta_2 typed on resume takes effect."""
    check_weights(model, state["model"], where)
    model.load_state_dict(state["model"])
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, values in zip(optimizer.param_groups, hyperparameters):
        group.update(values)
    scaler.load_state_dict(state["scaler"])
    objective.load_state_dict(state.get("objective", {}))
    set_rng_state(state["rng"])
