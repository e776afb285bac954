"""What the tests share: the backends this machine is expected to run, written out, and the (device, backend) cases
built from them; train.py loaded once as a module and the small tools its tests share. Test files import this module,
never each other.

The expectation does not come from the code under test (`available_backends`, `unavailable_reason`): a backend that
stops loading fails its cases instead of dropping out of a parametrized loop unnoticed.
  CPU tensors:   torch; triton through Triton's interpreter when TRITON_INTERPRET is on (conftest.py turns it on
                 where there is no GPU); cpu_twin, built with a C++ compiler and ninja (an install requirement).
  CUDA tensors:  on a GPU machine, cuda (the extension, prebuilt or JIT-built), triton (compiled) and torch.
Each list is in the order "auto" prefers, the order `available_backends` gives.
"""
import contextlib
import importlib
import os
import pathlib
import socket

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]

CUDA = torch.cuda.is_available()
# The spellings Triton reads as true (triton.knobs.getenv_bool); read after conftest.py has set the variable.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")

FUSED = ("triton", "cuda", "cpu_twin")
# The backends the suite runs on each device type, wherever they are expected to load.
DEVICE_BACKENDS = {"cpu": ("torch", "triton", "cpu_twin"), "cuda": ("torch", "triton", "cuda")}
EXPECTED_BACKENDS = {
    "cpu": ["torch"] + ["triton"] * TRITON_INTERPRET + ["cpu_twin"],
    "cuda": ["cuda", "triton", "torch"] if CUDA else [],
}

NO_CUDA = "no CUDA device on this machine"
# Every test that needs a GPU carries the `gpu` marker (pytest.ini) beside its skip: gpu_session.sh selects them with
# `-m gpu`, whatever file they are in.
needs_cuda = pytest.mark.skipif(not CUDA, reason=NO_CUDA)
ON_GPU = (pytest.mark.gpu, needs_cuda)


def exact_cudnn():
    """cuDNN as a float64 or float32 comparison needs it (on the CPU nothing changes): deterministic algorithms (a
    float64 weight gradient with atomics differs between two runs, and gradcheck checks that backward is reentrant:
    all 12 GPU cases failed so on an H100), no autotuner, and no TF32 (float32 convolutions rounded to 10 bits
    differ from a per-frame split by 1e-4)."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)


def gpu_test(test):
    """Decorator: a test that needs a GPU (marked `gpu`, skipped without one)."""
    for mark in ON_GPU:
        test = mark(test)
    return test


def not_expected_reason(device, backend):
    """Why `backend` is not expected to run on `device` here (the skip reason of its cases)."""
    if device == "cuda":
        return NO_CUDA
    assert backend == "triton", f"{backend} on {device} is expected wherever the tests run"
    return ("TRITON_INTERPRET is off (conftest.py turns it on only where there is no GPU): Triton runs CPU tensors "
            "only through its interpreter")


def device_backend_cases(backends=("torch", "triton", "cuda", "cpu_twin"), devices=("cpu", "cuda")):
    """pytest params (device, backend), id "cpu-triton", for each of `backends` the suite runs on each of `devices`.
    A pair expected on this machine carries no mark, so a backend that fails to load fails the test; the others
    skip with the reason they are not expected here."""
    cases = []
    for device in devices:
        for backend in (name for name in DEVICE_BACKENDS[device] if name in backends):
            expected = backend in EXPECTED_BACKENDS[device]
            marks = [] if expected else [pytest.mark.skip(reason=not_expected_reason(device, backend))]
            marks += [pytest.mark.gpu] * (device == "cuda")
            cases.append(pytest.param(device, backend, id=f"{device}-{backend}", marks=marks))
    return cases


def load_script(name):
    """The body of a script at the repository's root (train.py, ...): its module in convlstm/cli/."""
    return importlib.import_module(f"convlstm.cli.{name.removesuffix('.py')}")


# One module for every test file: a test that monkeypatches train_script's names patches those main() uses.
train_script = load_script("train.py")


# 24 sequences in batches of 4: 6 steps per epoch. On the CPU on every machine: the tests compare runs bit for bit,
# which CUDA's convolutions do not promise (test_train.py's test_tiny_run_on_the_gpu is the GPU's).
TINY = ["--n_hidden_dim", "4", "--image_size", "16", "--num_train", "24", "--num_val", "5", "--batch_size", "4",
        "--num_workers", "0", "--log_every", "2", "--amp", "none", "--device", "cpu"]


def run(tmp_run_dir, *flags):
    """train.py's main() on the tiny configuration into tmp_run_dir, more flags after it; returns the exit status."""
    return train_script.main(TINY + ["--run_dir", str(tmp_run_dir), *map(str, flags)])


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def single_process_group(monkeypatch):
    """The environment torchrun gives a world of one process (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, a free
    MASTER_PORT): train.py then runs under DistributedDataParallel over gloo in this process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)


def nan_output_models(monkeypatch):
    """Make train.py build models whose every output is NaN (so is every loss and gradient)."""
    build = train_script.model_from_config

    def model_with_nan_output(*args, **kwargs):
        model = build(*args, **kwargs)
        plain_forward = model.forward
        model.forward = lambda *a, **k: plain_forward(*a, **k) * float("nan")
        return model

    monkeypatch.setattr(train_script, "model_from_config", model_with_nan_output)


@contextlib.contextmanager
def default_dtype(dtype):
    """OpenSTL makes its zero state in the default dtype: float64 runs of its model need float64 as the default."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def unwritable_output(case, tmp_path, monkeypatch, flag, name):
    """An output folder (for `flag`, made as tmp_path/.../`name`) that cannot be written, and the words of its error
    line: under a regular file, in /proc, or on a read-only mount. A real mount needs privileges (and root writes
    through chmod): there every open under the folder in convlstm.atomic fails with EROFS, as on such a mount."""
    import builtins
    import errno

    from convlstm import atomic

    if case == "under_a_file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / name
        return out, f"{flag} {out}: {tmp_path / 'notes.txt'} is not a directory"
    if case == "in_proc":
        return pathlib.Path("/proc/convlstm_out"), f"{flag} /proc/convlstm_out: cannot write there"
    out = tmp_path / "mount"
    out.mkdir()

    def read_only_open(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", read_only_open, raising=False)
    return out, f"{flag} {out}: cannot write there (Read-only file system)"
