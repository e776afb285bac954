"""Train a ConvLSTM on Moving MNIST or your own sequences: plain PyTorch, DistributedDataParallel, torch.amp.

The model is any registered one (convlstm.models: the tutorial's EncoderDecoderConvLSTM, the default; OpenSTL's
ConvLSTM, --model openstl_convlstm, --preset convlstm_s / convlstm_l) or your own (--model FILE.py:Class), each
trained with its spec's objective.

    python train.py --run_dir runs/demo ...                               # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train.py --run_dir runs/a    # one machine, 8 processes
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...

Every process takes --batch_size sequences per micro-batch from one shared shuffled order, and --grad_accum
micro-batches make one optimizer step, so N processes with batch b accumulating A micro-batches train the same model
as one process with batch N*A*b. The learning rate follows --lr_schedule over the run's optimizer steps
(convlstm.training.schedule). Checkpoints go to <run_dir>/checkpoints (convlstm.checkpoint); --resume, or a
worker group restarted by torchrun --max-restarts, continues from the newest one, `--run_dir R --resume` alone with
the config saved in it. Several machines need --run_dir on a filesystem they share. `python train.py --help` lists
every flag by group; --config FILE.json gives them from a file.

Every fault ends in one line on stderr (and in train.log once it exists): exit status 1 for an error, 2 for a bad flag,
and 128 + signum (143, 130) when SIGTERM or SIGINT stopped the run after a step with a checkpoint. Rank 0 holds
<run_dir>/train.lock for the run's life, so a second run into the same run_dir is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import signal
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from convlstm.atomic import WriteError, check_writable_dir
from convlstm.budget import BudgetError, check_fits, training_bytes
from convlstm.data.sequence import split_masked
from convlstm.losses import FrameLoss, LossError
from convlstm.data.sources import DataError, error_line
from convlstm.evaluation.metrics import METRIC_NAMES, SSIM_WINDOW, MetricTotals, frame_metrics
from convlstm.load import load_model
from convlstm.model import forecast, model_from_config
from convlstm.models import make_objective, model_spec
from convlstm.ops.lstm_gates.backends import resolve
from convlstm.training.amp import NonFiniteWatch, Precision, SkippedSteps
from convlstm.checkpoint import (ELASTIC_RUN_ID_FILE, CheckpointError, check_weights, checkpoint_dir, choose_start,
                                 is_checkpoint_name, load_checkpoint, rng_state, save_checkpoint, saved_config,
                                 sweep_temp_files, write_config, write_elastic_run_id)
from convlstm.checkpoint import restore as restore_state
from convlstm.training.config import describe_config, parse_config, resolve_config, with_defaults
from convlstm.data.datasets import build_datasets
from convlstm.runtime import (EXIT_ERROR, SetupError, all_ranks, all_reduce, broadcast_object, distributed,
                              launch_rank, restart_count)
from convlstm.training.distributed import ResumableSampler, inject_fault, start_epoch
from convlstm.training.lock import lock_run_dir
from convlstm.training.logs import (LOG_FILE, PICTURE_FILE, TENSORBOARD_DIR, Reporter, close_logger, log_to_file,
                                   make_logger, start_tensorboard_server)
from convlstm.training.memory_format import MemoryFormat
from convlstm.training.preemption import (StopSignals, Stopped, exit_code, ignore_stop_signals,
                                          stop_workers_at_exit)
from convlstm.training.schedule import advance, build_scheduler


class TrainingError(RuntimeError):
    """A problem that stops the run with a message and exit status 1."""


INTERRUPTED = "interrupted; nothing saved since the last checkpoint"


def predict(model, batch, cfg, precision):
    """batch (B, T, C, H, W) -> inputs x, targets y (B, T_out, C, H, W) and predictions y_hat (float32, as y): the
    model's test-time forecast (OpenSTL's: its own outputs fed back, no true frame after the inputs). No-data pixels
    (NaN) are 0 in x, y and y_hat: out of the metrics' sums."""
    x, y, valid = split_masked(batch, cfg.n_steps_past, cfg.n_steps_ahead)
    with precision.autocast():
        y_hat = forecast(model, x, cfg.n_steps_ahead).float()
    return x, y, y_hat if valid is None else y_hat * valid


def next_batches(batches, count):
    """(the next `count` batches of a DataLoader iterator, None), or (None, the line of the DataError a read raised:
    bad data found only when read, such as a truncated PNG), or (the batches so far, None) at the iterator's end."""
    taken = []
    try:
        for _ in range(count):
            taken.append(next(batches))
    except StopIteration:
        pass
    except DataError as error:
        return None, error_line(error)
    return taken, None


def validate(model, loader, cfg, precision, layout, device, pixels, failed_rank):
    """(val_loss, {metric: overall mean}, sequences scored, None) on the held-out sequences: val_loss is the MSE per
    pixel (best.pt is chosen by it; `pixels` C*H*W, as "mse" is the per-frame sum over pixels), the metrics
    evaluate.py's. Each rank scores a disjoint share; totals are summed over ranks, so each sequence counts once.
    A read of bad data on any rank (`failed_rank`: the agreement) ends it on all with (None, None, 0, its line)."""
    totals, batches, failure = MetricTotals(cfg.n_steps_ahead, device), iter(loader), None
    model.eval()
    with torch.no_grad():
        while failure is None:
            taken, failure = next_batches(batches, 1)
            if not taken:
                break
            _, y, y_hat = predict(model, layout.batch(taken[0].to(device, non_blocking=True)), cfg, precision)
            totals.add(frame_metrics(y_hat, y))
    model.train()
    failed = failed_rank(failure is not None)
    if failed is not None:
        return None, None, 0, broadcast_object(failure, src=failed)
    totals.all_reduce()
    summary = totals.summary()
    return summary["mse"] / pixels, {name: summary[name] for name in METRIC_NAMES}, summary["num_sequences"], None


def check_run_dir(run_dir) -> None:
    """CheckpointError naming the first of the run's files or folders that cannot be written (an immutable
    train.log, a read-only tensorboard/), found before the first step instead of as a traceback mid-run. Files are
    opened to append, which changes nothing; folders get a temp file (convlstm.atomic.check_writable_dir)."""
    ckpt = checkpoint_dir(run_dir)
    ours = [os.path.join(run_dir, name) for name in (LOG_FILE, "config.json", PICTURE_FILE, ELASTIC_RUN_ID_FILE)]
    if os.path.isdir(ckpt):  # a folder named step_1.pt too: the run would write over it
        ours += [os.path.join(ckpt, name) for name in sorted(os.listdir(ckpt)) if is_checkpoint_name(name)]
    for path in ours:
        if os.path.lexists(path):
            try:
                with open(path, "ab"):
                    pass
            except OSError as error:
                raise CheckpointError(f"cannot write {path}: {error.strerror or error}") from None
    for folder in (run_dir, os.path.join(run_dir, TENSORBOARD_DIR), ckpt):
        if os.path.lexists(folder):
            try:
                check_writable_dir(folder)
            except WriteError as error:
                raise CheckpointError(str(error)) from None


def start_state(cfg, info, warnings: list):
    """Rank 0 takes the run_dir's lock, then decides between a fresh start and a checkpoint and tells every rank.
    Returns (the checkpoint or None, the lock: a context that releases it; a no-op context on the other ranks).
    Temp files swept and unreadable checkpoints skipped on the way are appended to `warnings`."""
    decision, state, lock = None, None, contextlib.nullcontext()
    if info.is_main:
        try:
            lock = lock_run_dir(cfg.run_dir)
            check_run_dir(cfg.run_dir)
            removed = sweep_temp_files(cfg.run_dir)
            if removed:
                warnings.append(f"removed {len(removed)} temp file(s) of an interrupted write: {', '.join(removed)}")
            found = choose_start(cfg.run_dir, cfg.resume, os.environ.get("TORCHELASTIC_RUN_ID"), restart_count(),
                                 warnings.append)
        except CheckpointError as error:
            decision = ("error", str(error))
        else:
            decision = ("resume", found[0]) if found else ("fresh", None)
            state = found[1] if found else None
    kind, detail = broadcast_object(decision)
    if kind == "error":
        with lock:
            raise TrainingError(detail)
    if kind == "fresh":
        return None, lock
    return (state if info.is_main else load_checkpoint(detail)), lock


def train_step(model, ddp, batches, cfg, precision, layout, optimizer, parameters, device, objective, step):
    """Optimizer step `step` (0-based) on the cfg.grad_accum micro-batches `batches` ((b, T, C, H, W) each), each
    micro-batch's loss the model's objective (its spec's: convlstm.models).

    Each micro-batch's mean loss is divided by their number N before its backward, so the gradients add up to those of
    the mean over all N*b sequences: N micro-batches of b step as one batch of N*b does. Under DDP (`ddp`, else None)
    the N-1 first run in no_sync() and only the last backward all-reduces. Returns the step's loss (their mean, 0-dim),
    the gradient norm before clipping and the last micro-batch (for the picture).
    """
    losses = []
    for k, (mask, batch) in enumerate(zip(objective.masks(step, cfg.grad_accum, device), batches)):
        sync = ddp is None or k == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            batch = layout.batch(batch.to(device, non_blocking=True))
            with precision.autocast():
                loss = objective(model, batch, mask)
            precision.backward(loss / cfg.grad_accum)
        losses.append(loss.detach())
    grad_norm = precision.step(optimizer, parameters, cfg.grad_clip)
    return torch.stack(losses).mean(), grad_norm, batch


def restore(state, cfg, model, optimizer, precision, objective, log) -> None:
    """Resume from a checkpoint (convlstm.checkpoint.restore) once its config agrees with this run's on the model's
    fields; the flags that changed are logged. The caller then places the schedule at the checkpoint's step."""
    spec = model_spec(cfg.model)
    saved = with_defaults(state["config"], spec)  # a checkpoint older than a field has its default
    mismatched = [f"--{name} {saved.get(name)!r} (this run: {getattr(cfg, name)!r})"
                  for name in ("model", "in_chan", *spec.weight_fields) if saved.get(name) != getattr(cfg, name)]
    if mismatched:
        raise TrainingError("the checkpoint's model was built with " + ", ".join(mismatched)
                            + ": pass the same values to resume, or choose another --run_dir")
    changed = [f"{name} {saved.get(name)!r} -> {value!r}" for name, value in dataclasses.asdict(cfg).items()
               if name != "resume" and saved.get(name) != value]
    if changed:
        log.warning("flags changed since the checkpoint: " + ", ".join(changed))
    restore_state(state, model, optimizer, precision, objective, checkpoint_dir(cfg.run_dir))


def load_initial_weights(model, cfg) -> str:
    """Load --init_weights into the fresh model; returns what was loaded, for the log. Any checkpoint
    convlstm.load_model reads (OpenSTL's own files with this run's channels and cell_output: the spec's
    load_options); its weights must have the keys and shapes of the model these flags build
    (convlstm.checkpoint.check_weights)."""
    spec = model_spec(cfg.model)
    options = {name: getattr(cfg, name) for name in spec.load_options}
    try:
        source = load_model(cfg.init_weights, backend="torch", channels=cfg.in_chan,
                            model_class=spec.model_class if spec.plugin else None, **options)
        theirs = source.state_dict()
        check_weights(model, theirs, cfg.init_weights)
    except CheckpointError as error:
        raise TrainingError(f"--init_weights: {error}") from None
    model.load_state_dict(theirs)
    return f"{cfg.init_weights} ({source.info.kind} checkpoint, {len(theirs)} tensors)"


# A DataLoader worker's own memory at the least: a forked Python process shares its parent's pages until it writes
# them; its interpreter state, stack and the pages it touches are its own (tens of MiB each, more with torch).
WORKER_BYTES = 16 * 2**20


def check_memory(cfg, device, frame_shape, sequences) -> None:
    """Refuse a configuration whose training step cannot fit in memory, before a frame or a weight is made
    (convlstm.budget's lower bounds). On the device: the weights with their gradients and Adam's two moments, what
    autograd keeps of a batch for backward (half under autocast), the batch itself. On the host: the sampler's
    shuffled order (a permutation of int64 and its Python list: 16 bytes a sequence at least), the DataLoader's
    workers, Moving MNIST's digit paths."""
    config = {**dataclasses.asdict(cfg), "in_chan": frame_shape[0]}
    channels, height, width = frame_shape
    try:
        params, saved = training_bytes(config, frame_shape, cfg.batch_size)
    except (RuntimeError, ValueError):  # a model these values or frames cannot build: make_data says why
        return
    frames = f"--resize {cfg.resize}" if cfg.resize else f"--image_size {cfg.image_size}" if cfg.data is None \
        else f"frames of {height}x{width}"
    shape = ", ".join(f"--{name} {getattr(cfg, name)}" for name in model_spec(cfg.model).weight_fields)
    steps = cfg.n_steps_past + cfg.n_steps_ahead
    batch = 4 * cfg.batch_size * steps * channels * height * width
    on_device = {
        "weights and Adam's state": (shape, 4 * params),
        "activations": (f"{frames}, --batch_size {cfg.batch_size}, --n_hidden_dim {cfg.n_hidden_dim}",
                        saved / (2 if cfg.amp in ("bf16", "fp16") else 1) + batch)}
    on_host = {
        "shuffled order": (f"--num_train {sequences}" if cfg.data is None else f"{sequences} training windows",
                           16 * sequences),
        "DataLoader workers": (f"--num_workers {cfg.num_workers}", WORKER_BYTES * cfg.num_workers)}
    if cfg.data is None:  # each generated sequence draws (num_digits, T, 2) int64 positions
        on_host["digit paths"] = (f"--num_digits {cfg.num_digits}", 16 * cfg.num_digits * steps * cfg.batch_size)
    # A GPU's memory and the host's are two budgets; on the CPU they are one.
    budgets = [(on_device, device), (on_host, torch.device("cpu"))] if device.type != "cpu" else \
        [({**on_device, **on_host}, device)]
    try:
        for parts, where in budgets:
            check_fits(parts, where, "a training step")
    except BudgetError as error:
        raise TrainingError(str(error)) from None


def make_data(cfg, info, train_set=None, val_set=None):
    """The datasets (convlstm.data.datasets), checked before anything is written, and cfg with in_chan set to
    the data's channel count. Returns (cfg, frame_shape (C, H, W), description)."""
    try:
        train_set, val_set, frame_shape, described = build_datasets(
            cfg, train_set, val_set, lambda shape, count: check_memory(cfg, info.device, shape, count))
    except (FileNotFoundError, ValueError) as error:
        source = f"--data {cfg.data}" if cfg.data else f"Moving MNIST (--digits {cfg.digits}, --image_size " \
                                                        f"{cfg.image_size})"
        raise TrainingError(f"cannot read {source}: {error}") from error
    if min(frame_shape[1:]) < SSIM_WINDOW:  # found here, not at the first validation after training steps
        raise TrainingError(f"{f'--data {cfg.data}' if cfg.data else 'the data'} has frames of {frame_shape[1]}x"
                            f"{frame_shape[2]}, smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window validation scores "
                            f"SSIM with: --resize them to at least {SSIM_WINDOW}x{SSIM_WINDOW}")
    if cfg.in_chan is not None and cfg.in_chan != frame_shape[0]:
        raise TrainingError(f"the data has {frame_shape[0]} channel(s) but --in_chan is {cfg.in_chan}")
    try:  # the model's own frame rules (its spec's build), on the meta device: no memory
        with torch.device("meta"):
            model_from_config({**dataclasses.asdict(cfg), "in_chan": frame_shape[0]}, "torch", frame_shape)
    except ValueError as error:
        raise TrainingError(f"{error}: pick model flags that fit these frames, or --resize") from None
    units = getattr(getattr(train_set, "source", None), "units", None)  # a NetCDF archive's, as resolved: stored
    cfg = dataclasses.replace(cfg, transform=units.kind) if units is not None else cfg
    try:  # the loss fits the data (the balanced ones need rain rates): told before anything is written
        FrameLoss.of(cfg)
    except LossError as error:
        raise TrainingError(str(error)) from None
    return dataclasses.replace(cfg, in_chan=frame_shape[0]), (train_set, val_set), frame_shape, described


def make_loaders(cfg, info, datasets):
    """Training loader over a ResumableSampler and a validation loader over this rank's disjoint share of the
    validation sequences (rank, rank + W, ...: no padding, so every held-out sequence counts exactly once)."""
    train_set, val_set = datasets
    sampler = ResumableSampler(train_set, num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
    loader_options = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          pin_memory=info.device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                          worker_init_fn=ignore_stop_signals)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=True, **loader_options)
    if len(train_loader) < cfg.grad_accum:
        accumulated = f" x {cfg.grad_accum} accumulated" if cfg.grad_accum > 1 else ""
        raise TrainingError(f"{len(train_set)} training sequences are fewer than one global batch (--batch_size "
                            f"{cfg.batch_size} x {info.world_size} processes{accumulated}): no training step per "
                            "epoch" + ("" if cfg.data else f"; raise --num_train {cfg.num_train}"))
    val_share = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    return sampler, train_loader, DataLoader(val_share, **loader_options)


def train(cfg, info, train_set=None, val_set=None) -> None:
    cfg = resolve_config(cfg, info.device.type, info.device.type == "cuda" and torch.cuda.is_bf16_supported())
    if info.device.type == "cuda":  # the CPU has no cuDNN; README "Training on GPUs" says what it does to --resume
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    try:
        backend, _ = resolve(cfg.backend, info.device)
    except (RuntimeError, ValueError) as error:
        raise TrainingError(str(error)) from error
    cfg, datasets, frame_shape, described = make_data(cfg, info, train_set, val_set)
    loaders = make_loaders(cfg, info, datasets)
    skipped = []
    state, lock = start_state(cfg, info, skipped)
    # Rank 0 holds the run_dir until the run ends (the OS releases it if the process dies); SIGTERM and SIGINT stop
    # the run after a step, with a checkpoint.
    with lock, StopSignals() as stop:
        log = make_logger(cfg.run_dir, info.rank)
        try:
            for message in skipped:
                log.warning(message)
            _train(cfg, info, state, backend, log, loaders, frame_shape, described, stop)
        except (TrainingError, SetupError, CheckpointError) as error:
            log_to_file(log, f"error: {error}")
            raise
        except Stopped as stopped:
            log_to_file(log, str(stopped), logging.WARNING)
            raise
        except KeyboardInterrupt:  # a second Ctrl-C
            log_to_file(log, INTERRUPTED, logging.WARNING)
            raise
        finally:
            close_logger(log)


class Run:
    """One run between its steps: the model from the registry (raw and as trained: DDP, torch.compile), its
    objective, Adam, the schedule over the run's optimizer steps, the precision, and where the run is (step, epoch,
    sequences seen, best validation loss), started fresh, from --init_weights or from a checkpoint (`state`)."""

    def __init__(self, cfg, info, state, backend, log, loaders, frame_shape, described):
        self.cfg, self.info, self.log, self.frame_shape, self.device = cfg, info, log, frame_shape, info.device
        self.global_batch = cfg.batch_size * info.world_size * cfg.grad_accum  # sequences per optimizer step
        _, train_loader, self.val_loader = loaders
        self.total_steps = cfg.epochs * (len(train_loader) // cfg.grad_accum)  # optimizer steps; the schedule's
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        self.layout = MemoryFormat(cfg.channels_last)
        self.raw_model = self.layout.model(model_from_config(dataclasses.asdict(cfg), frame_shape=frame_shape)
                                           .to(self.device))
        self.objective = make_objective(cfg, frame_shape, info.rank)
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(), lr=cfg.lr, betas=(cfg.beta_1, cfg.beta_2))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.precision = Precision(cfg.amp, self.device)
        self.step, self.epoch, self.samples_seen, self.best_val_loss, initial = 0, 0, 0, None, None
        if state is None and cfg.init_weights:
            initial = load_initial_weights(self.raw_model, cfg)
        if state is not None:  # before anything is written: a refused resume leaves config.json as it was
            restore(state, cfg, self.raw_model, self.optimizer, self.precision, self.objective, log)
            self.step, self.best_val_loss = state["step"], state["best_val_loss"]
            self.epoch, self.samples_seen = state["sampler"]["epoch"], state["sampler"]["samples_seen"]
            self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps, done_steps=self.step)
        if info.is_main:
            self._log_start(backend, described, initial, state is not None)
        self.model, self.ddp = self.raw_model, None
        if info.is_distributed:
            self.model = self.ddp = DistributedDataParallel(
                self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=model_spec(cfg.model).unused_parameters)  # OpenSTL's conv_o, conv_last
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.parameters = list(self.raw_model.parameters())
        self.reporter = Reporter(cfg.run_dir, info.is_main, info.world_size, self.global_batch, self.total_steps,
                                 self.step, self.device, log)
        if cfg.tensorboard and info.is_main:
            log.info(f"TensorBoard serving {cfg.run_dir} at {start_tensorboard_server(cfg.run_dir)}")
        self.watch = NonFiniteWatch(enabled=cfg.amp != "fp16", device=self.device)
        self.skips = SkippedSteps(enabled=cfg.amp == "fp16" and cfg.max_skipped_steps > 0, device=self.device)

    def _log_start(self, backend, described, initial, resumed):
        cfg, log = self.cfg, self.log
        write_elastic_run_id(cfg.run_dir, os.environ.get("TORCHELASTIC_RUN_ID"))
        write_config(cfg.run_dir, dataclasses.asdict(cfg))
        for line in describe_config(cfg):  # what applies, by group; config.json holds every field
            log.info(line)
        accumulated = f" ({cfg.batch_size} per process x {cfg.grad_accum} accumulated)" if cfg.grad_accum > 1 else ""
        log.info(f"{self.info.world_size} process(es) on {self.device.type}, global batch {self.global_batch}"
                 f"{accumulated}, amp {cfg.amp}, gate backend {backend}, lr schedule {cfg.lr_schedule} over "
                 f"{self.total_steps} steps")
        log.info(f"data: {described}; frames {self.frame_shape} (C, H, W)")
        if initial is not None:
            log.info(f"initial weights from {initial}")
        if resumed:
            log.info(f"resumed from step {self.step} (epoch {self.epoch}, {self.samples_seen} sequences into it)")
        elif cfg.resume:
            log.info(f"--resume: no checkpoint in {checkpoint_dir(cfg.run_dir)} yet, starting fresh")

    def train_step(self, batches):
        """One optimizer step on `batches` and the schedule's advance; returns the last micro-batch."""
        loss, grad_norm, batch = train_step(self.model, self.ddp, batches, self.cfg, self.precision, self.layout,
                                            self.optimizer, self.parameters, self.device, self.objective, self.step)
        advance(self.scheduler)
        self.step, self.samples_seen = self.step + 1, self.samples_seen + self.global_batch
        self.reporter.record(loss, grad_norm)
        self.watch.observe(loss, self.step)
        self.skips.observe(grad_norm)
        return batch

    def latest(self) -> str:
        return os.path.join(checkpoint_dir(self.cfg.run_dir), "latest.pt")

    def stop_if_not_finite(self):
        last_good = f"The last good checkpoint is {self.latest()} (left as it was)"
        bad = self.watch.first_bad_step(lambda t: all_reduce(t, torch.distributed.ReduceOp.MIN))
        if bad is not None:
            raise all_ranks(TrainingError(f"non-finite training loss at step {bad}; stopping. {last_good}"))
        in_a_row = self.skips.longest_run(lambda t: all_reduce(t, torch.distributed.ReduceOp.MAX))
        if in_a_row > self.cfg.max_skipped_steps:
            raise all_ranks(TrainingError(f"the fp16 GradScaler skipped {in_a_row} steps in a row (non-finite "
                                          f"gradients each time) by step {self.step}, more than --max_skipped_steps "
                                          f"{self.cfg.max_skipped_steps}; stopping. {last_good}"))

    def report(self, lr):
        self.stop_if_not_finite()
        self.reporter.report(self.step, self.epoch, lr, all_reduce, self.objective.logged_eta())

    def picture(self, batch):
        """Rank 0: the test-time forecast of a training sequence (OpenSTL's training step was fed true frames)."""
        with torch.no_grad():
            x, y, y_hat = predict(self.raw_model, batch[:1], self.cfg, self.precision)
        self.reporter.picture(self.step, x[0], y[0], y_hat[0])

    def validate(self, failed_rank):
        """(val_loss, metrics) on the held-out sequences, reported; bad data read there stops every rank."""
        started = time.perf_counter()
        val_loss, metrics, count, failure = validate(self.raw_model, self.val_loader, self.cfg, self.precision,
                                                     self.layout, self.device, math.prod(self.frame_shape),
                                                     failed_rank)
        if failure:
            self.stop_for_bad_data(failure, saved=False)
        self.reporter.validation(self.step, self.epoch, val_loss, metrics, count, time.perf_counter() - started)
        return val_loss, metrics

    def save(self, val_loss=None, val_metrics=None):
        self.stop_if_not_finite()  # never write a checkpoint of weights a bad step has touched
        is_best = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if is_best:
            self.best_val_loss = val_loss
        failure = None
        if self.info.is_main:
            try:
                save_checkpoint(checkpoint_dir(self.cfg.run_dir), {
                    "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scaler": self.precision.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "objective": self.objective.state_dict(), "step": self.step, "epoch": self.epoch,
                    "sampler": {"epoch": self.epoch, "samples_seen": self.samples_seen},
                    "config": dataclasses.asdict(self.cfg), "frame_shape": list(self.frame_shape),
                    "rng": rng_state(), "val_loss": val_loss, "val_metrics": val_metrics,
                    "best_val_loss": self.best_val_loss}, keep=self.cfg.keep_checkpoints, is_best=is_best)
            except CheckpointError as error:
                failure = str(error)
        # Also the barrier: the other ranks go on once the checkpoint is complete, or stop with rank 0's line.
        failure = broadcast_object(failure)
        if failure:
            raise all_ranks(TrainingError(failure))

    def stop_for_bad_data(self, failure, saved):
        """Every rank, once they agree a read failed on some rank (its line `failure`): a checkpoint of the steps
        taken, then one line."""
        if not saved:
            self.save()
        kept = f"checkpoint {self.latest()} kept" if os.path.exists(self.latest()) else "no checkpoint yet"
        raise all_ranks(TrainingError(f"{failure}; stopped after step {self.step}, {kept}: mend or remove that "
                                      "sequence (or pass --skip_bad_data, whose scan leaves it out) and run again"))

    def stop_for_signal(self, signum, saved, last_step):
        """Every rank, after the step they agreed a signal arrived by: a checkpoint, then exit 128 + signum."""
        if not saved:
            self.save()
        self.reporter.close()
        then = "the run is complete" if last_step else "continue with --resume"
        raise Stopped(f"stopped by {signal.Signals(signum).name} after step {self.step}; checkpoint {self.latest()} "
                      f"written: {then}", signum, announce=self.info.is_main)


def _train(cfg, info, state, backend, log, loaders, frame_shape, described, stop) -> None:
    """The loop: steps until the run's last, each on the next --grad_accum micro-batches every rank has read (bad
    data on any rank stops all), then the log, the picture, validation after each epoch, checkpoints, and a signal
    all ranks agree on after the same step."""
    run = Run(cfg, info, state, backend, log, loaders, frame_shape, described)
    sampler, train_loader, _ = loaders
    train_loader = inject_fault(train_loader, info, run.step, cfg.grad_accum)  # the tests' kill; else as it is
    saved = True  # nothing taken yet since the start or the checkpoint resumed
    while run.step < run.total_steps:
        run.epoch, run.samples_seen = start_epoch(sampler, train_loader, run.epoch, run.samples_seen, log.warning,
                                                  cfg.grad_accum)
        batches, steps_left = iter(train_loader), len(train_loader) // cfg.grad_accum  # a last partial step: dropped
        while steps_left:
            taken, failure = next_batches(batches, cfg.grad_accum)
            failed = stop.failed_rank(failure is not None)  # every rank stops before the same step
            if failed is not None:
                run.stop_for_bad_data(broadcast_object(failure, src=failed), saved)
            lr = run.optimizer.param_groups[0]["lr"]
            batch = run.train_step(taken)
            steps_left -= 1
            epoch_done, last_step = steps_left == 0, run.step == run.total_steps
            if epoch_done:
                run.epoch, run.samples_seen = run.epoch + 1, 0
            if run.reporter.due(run.step, cfg.log_every, last_step):
                run.report(lr)
            else:
                run.reporter.progress(run.step, run.epoch)
            if (run.step % cfg.image_every == 0 or last_step) and info.is_main:
                run.picture(batch)
            val_loss, val_metrics = run.validate(stop.failed_rank) if epoch_done or last_step else (None, None)
            saved = epoch_done or last_step or run.step % cfg.checkpoint_every == 0
            if saved:
                run.save(val_loss, val_metrics)
            signum = stop.agreed()  # every rank stops after the same step; after the last one too (exit 128 + signum)
            if signum:
                run.stop_for_signal(signum, saved, last_step)
            if last_step:
                break
    run.reporter.close()
    if info.is_main:
        log.info(f"done: {run.step} steps; checkpoints in {checkpoint_dir(cfg.run_dir)}")


def main(argv=None, train_dataset=None, val_dataset=None) -> int:
    """Train with the flags `argv` (default sys.argv[1:]). From Python, train_dataset and val_dataset may be any
    torch Datasets whose items are float32 (T, C, H, W) tensors in [0, 1], T >= n_steps_past + n_steps_ahead; they
    replace --data."""
    stop_workers_at_exit()  # DataLoader workers ignore SIGTERM: an uncaught exception must not hang the exit
    try:
        cfg = parse_config(argv, saved_config=saved_config)  # --resume: the checkpoint's config under the flags
        with distributed(cfg.device) as info:
            train(cfg, info, train_dataset, val_dataset)
    except (TrainingError, SetupError, CheckpointError) as error:
        if not getattr(error, "all_ranks", False) or launch_rank() == 0:  # agreed: rank 0 says it
            print(f"train.py: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Stopped as stopped:
        if stopped.announce:
            print(f"train.py: {stopped}", file=sys.stderr)
        return stopped.code
    except KeyboardInterrupt:  # Ctrl-C before training began, or a second one
        print(f"train.py: {INTERRUPTED}", file=sys.stderr)
        return exit_code(signal.SIGINT)
    except OSError as error:  # a full disk outside the checkpoint writes (predictions.png): one line all the same
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"train.py: error: no space left writing {error.filename or cfg.run_dir}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
