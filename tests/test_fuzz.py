"""Seeded fuzz test of the three scripts (train.py, evaluate.py, predict.py) against bad flags and bad files.

What is fuzzed: each case starts from a tiny valid configuration of one script and adds 1 to 3 flags drawn from the
script's own argument parser (so flags added later are fuzzed too), with values chosen by the flag's type, choices
and nargs: odd numbers (negative, zero, 10**12, 2**70, nan, inf, not a number), bad choices, and for string flags
paths to generated bad inputs (arrays, frame folders, videos, --config files, checkpoints) or odd strings.

What is asserted for every case (each run in a forked child process, so that a crash or a hang is one failed case):
  1. the exit status is 0, 1 or 2 (no signal, no hang, no other status);
  2. stderr holds no "Traceback" (an exception escaping main() is printed as one by the harness);
  3. nothing in the sandbox directory changed except the case's own output: train.py's --run_dir, evaluate.py's
     --out_dir, predict.py's --out (the last value given; an empty value names nothing, so exempts nothing).

The children run with an address-space limit (their size + MEMORY_HEADROOM), so an absurd allocation fails at once
(a MemoryError traceback is then a failure, as it should be: absurd sizes must be refused with one line), and with
at most FORK_LIMIT forks, standing in for a process limit that root does not have (a huge --num_workers).
A failure shows the script, the argv and a command line to rerun the case by hand, the exit status and stderr's tail.
"""
import argparse
import errno
import faulthandler
import hashlib
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import sys
import time
import traceback
import zipfile

import numpy as np
import pytest
import torch

import convlstm.evaluation.plots  # noqa: F401  evaluate.py imports it lazily: once here, not in every child
from convlstm.training.config import build_parser as train_parser
from helpers import REPO, load_script, train_script

evaluate_script = load_script("evaluate.py")
predict_script = load_script("predict.py")

SEED = 1729
# Measured on the 2-core test machine, per case (fork, run, two snapshots): median 0.05 s; mean 0.08 s (train.py),
# 0.15 s (evaluate.py: it writes plots), 0.06 s (predict.py). The file: about 40 s with no case hanging, plus
# CASE_TIMEOUT_S per hang.
CASES = {"train.py": 100, "evaluate.py": 100, "predict.py": 100}
CASE_TIMEOUT_S = 20  # the slowest valid case takes ~6 s
MEMORY_HEADROOM = 6 * 2**30
FORK_LIMIT = 32
HASHED_BYTES = 2**20  # files up to this size are compared by content too, larger ones by size and mtime

# Each script: its main, its parser, and the flag naming the one place it may write.
SCRIPTS = {
    "train.py": (train_script.main, train_parser, "--run_dir"),
    "evaluate.py": (evaluate_script.main, evaluate_script.build_parser, "--out_dir"),
    "predict.py": (predict_script.main, predict_script.build_parser, "--out"),
}
TINY_TRAIN = ["--n_hidden_dim", "4", "--image_size", "16", "--num_train", "16", "--num_val", "4", "--batch_size", "2",
              "--num_workers", "0", "--amp", "none", "--device", "cpu", "--max_steps", "2", "--epochs", "1",
              "--log_every", "1"]

INTS = ["-1", "0", "1", "2", "3", str(10**12), str(2**70), "x"]
FLOATS = ["nan", "inf", "-1", "0", "1e-12", "0.5", "1e12", "x"]
WORDS = ["True", "False", "yes", "maybe", "0", "-1", "x"]  # for a type of its own (train.py's booleans)
# Strings that are not paths to generated inputs: sizes for --resize, devices for predict.py's --device, and names no
# file system takes (under a file, in /proc, longer than NAME_MAX). {root} is the sandbox.
ODD_STRINGS = ["", "{root}/inputs/arrays/good.npy/sub", "/proc/x", "n" * 300, "{root}/missing.npy", "0", "-1",
               "16x16", "99999x99999", "x", "meta", "cuda:0"]
# Flag values never drawn, for time, not correctness: torch.compile costs ~40 s a run on this CPU, Triton's
# interpreter ~5.5 s a case; a count of 10**12 where a large one is valid but long (10**12 validation or test
# sequences: hours, not a fault; beyond int64 is still drawn).
ONLY_VALUE = {"compile": "False"}
NOT_DRAWN = {"backend": {"triton"}}
LONG_WORK = {"num_val", "num_test", "epochs", "max_steps"}
# Which generated inputs suit a flag, by a word in its name (any flag may still get any input).
KIND_WORDS = {"config": "configs", "checkpoint": "checkpoints", "weights": "checkpoints", "data": "data",
              "input": "data"}


# ---------------------------------------------------------------------------------------------------------------
# Generated inputs, made once per module in the sandbox.

class Sandbox:
    """The directory the cases run in: generated inputs by kind, the good ones by name, a trained checkpoint."""

    def __init__(self, root, logs):
        self.root, self.logs = str(root), str(logs)
        self.kinds = {"data": [], "configs": [], "checkpoints": []}
        self.good = {}
        self.has_video = False

    def add(self, kind, path):
        self.kinds[kind].append(str(path))
        return str(path)

    def path(self, *parts):
        return os.path.join(self.root, *parts)


def good_sequences(shape=(8, 20, 1, 16, 16), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def make_arrays(box):
    folder = box.path("inputs", "arrays")
    os.makedirs(folder)
    good = good_sequences()
    box.good["npy"] = box.add("data", os.path.join(folder, "good.npy"))
    np.save(box.good["npy"], good)
    # Bad values in a later sequence: a check of the first sequence alone misses them.
    for name, value in (("nan", np.nan), ("inf", np.inf), ("scale255", 200.0)):
        bad = good.copy()
        bad[5, 12] = value
        np.save(box.add("data", os.path.join(folder, f"{name}.npy")), bad)
    arrays = {"ndim2": good[0, 0, 0], "ndim6": good[None], "zero_size": good[:0], "short": good[:, :5],
              "int64": (good * 255).astype(np.int64)}
    for name, array in arrays.items():
        np.save(box.add("data", os.path.join(folder, f"{name}.npy")), array)
    with zipfile.ZipFile(box.add("data", os.path.join(folder, "text_member.npz")), "w") as archive:
        archive.writestr("notes.txt", "not an array")
    np.savez(box.add("data", os.path.join(folder, "object.npz")), seqs=np.array([good[0], "x"], dtype=object))
    open(box.add("data", os.path.join(folder, "empty.npy")), "wb").close()
    with open(box.add("data", os.path.join(folder, "random_bytes.npy")), "wb") as handle:
        handle.write(np.random.default_rng(1).bytes(4096))
    # A header promising 10**12 sequences over 16 bytes of data.
    with open(box.add("data", os.path.join(folder, "lying_header.npy")), "wb") as handle:
        header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 20, 1, 16, 16)}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(bytes(16))


def write_png(path, pixels):
    from PIL import Image
    Image.fromarray(pixels).save(path)


def write_frames(folder, sizes, seed=0):
    """One frame folder: a grey PNG of each (H, W) in sizes, named 0.png, 1.png, ..."""
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    for t, size in enumerate(sizes):
        write_png(os.path.join(folder, f"{t}.png"), (rng.random(size) * 255).astype(np.uint8))


def make_frame_folders(box):
    folder = box.path("inputs", "frames")
    good = box.good["frames"] = box.add("data", os.path.join(folder, "good"))
    for n in range(2):
        write_frames(os.path.join(good, f"seq_{n}"), [(16, 16)] * 20, seed=n)
    truncated = box.add("data", os.path.join(folder, "truncated_png"))
    write_frames(os.path.join(truncated, "seq_0"), [(16, 16)] * 20)
    last = os.path.join(truncated, "seq_0", "19.png")
    with open(last, "rb") as handle:
        head = handle.read(40)  # the signature and the header: the size reads, the pixels do not
    with open(last, "wb") as handle:
        handle.write(head)
    write_frames(os.path.join(box.add("data", os.path.join(folder, "mixed_in_sequence")), "seq_0"),
                 [(16, 16)] * 10 + [(20, 20)] * 10)
    mixed = box.add("data", os.path.join(folder, "mixed_sequences"))
    write_frames(os.path.join(mixed, "seq_0"), [(16, 16)] * 20)
    write_frames(os.path.join(mixed, "seq_1"), [(24, 24)] * 20)
    write_frames(os.path.join(box.add("data", os.path.join(folder, "tiny_3x3")), "seq_0"), [(3, 3)] * 20)
    os.makedirs(box.add("data", os.path.join(folder, "empty")))
    loop = box.add("data", os.path.join(folder, "symlink_loop"))
    os.makedirs(loop)
    os.symlink(".", os.path.join(loop, "seq_0"))  # a folder that holds itself
    os.symlink("b", os.path.join(loop, "a"))
    os.symlink("a", os.path.join(loop, "b"))
    garbage = os.path.join(box.add("data", os.path.join(folder, "not_images")), "seq_0")
    os.makedirs(garbage)
    for t in range(20):
        with open(os.path.join(garbage, f"{t}.png"), "wb") as handle:
            handle.write(np.random.default_rng(t).bytes(64))


def make_videos(box):
    """A valid tiny mp4, a truncated copy, a folder holding both, random bytes named .mp4; nothing without PyAV."""
    try:
        import av
    except ImportError:
        return
    folder = box.path("inputs", "videos")
    os.makedirs(folder)
    good = box.good["mp4"] = box.add("data", os.path.join(folder, "good.mp4"))
    frames = (np.random.default_rng(0).random((24, 16, 16, 3)) * 255).astype(np.uint8)
    with av.open(good, "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with open(good, "rb") as handle:
        data = handle.read()
    with open(box.add("data", os.path.join(folder, "truncated.mp4")), "wb") as handle:
        handle.write(data[:len(data) // 2])
    both = box.add("data", os.path.join(folder, "good_and_truncated"))
    os.makedirs(both)
    shutil.copy(good, os.path.join(both, "a.mp4"))
    with open(os.path.join(both, "b.mp4"), "wb") as handle:
        handle.write(data[:len(data) // 2])
    with open(box.add("data", os.path.join(folder, "random_bytes.mp4")), "wb") as handle:
        handle.write(np.random.default_rng(2).bytes(4096))
    box.has_video = True


def make_configs(box):
    folder = box.path("inputs", "configs")
    os.makedirs(folder)
    files = {"not_utf8.json": b'{"lr": "\xff\xfe"}', "not_json.json": b"{lr: 1", "list.json": b"[1, 2]",
             "unknown_key.json": b'{"no_such_flag": 1}', "wrong_type.json": b'{"epochs": "many"}',
             "nan.json": b'{"lr": NaN}', "huge_int.json": b'{"batch_size": 1000000000000000000000000000000}',
             "empty.json": b""}
    for name, content in files.items():
        with open(box.add("configs", os.path.join(folder, name)), "wb") as handle:
            handle.write(content)


def make_checkpoints(box, good):
    """Bad checkpoints beside the good one (a train.py checkpoint of the tiny model)."""
    folder = box.path("inputs", "checkpoints")
    os.makedirs(folder)
    box.good["checkpoint"] = box.add("checkpoints", good)
    with open(good, "rb") as handle:
        data = handle.read()
    for name, content in (("empty.pt", b""), ("random_bytes.pt", np.random.default_rng(3).bytes(4096)),
                          ("truncated.pt", data[:len(data) // 2])):
        with open(box.add("checkpoints", os.path.join(folder, name)), "wb") as handle:
            handle.write(content)
    torch.save({"x": 1}, box.add("checkpoints", os.path.join(folder, "dict_x.pt")))
    torch.save(argparse.Namespace(lr=1), box.add("checkpoints", os.path.join(folder, "not_weights_only.pt")))
    checkpoint = torch.load(good, weights_only=True)
    variants = {"nan_weights.pt": {"model": {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                              for k, v in checkpoint["model"].items()}},
                "huge_image_size.pt": {"config": {**checkpoint["config"], "image_size": 10**12}},
                "zero_steps.pt": {"config": {**checkpoint["config"], "n_steps_past": 0, "n_steps_ahead": -1}}}
    for name, change in variants.items():
        torch.save({**checkpoint, **change}, box.add("checkpoints", os.path.join(folder, name)))


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    box = Sandbox(tmp_path_factory.mktemp("fuzz_sandbox"), tmp_path_factory.mktemp("fuzz_logs"))
    for folder in ("runs", "out"):
        os.makedirs(box.path(folder))
    make_arrays(box)
    make_frame_folders(box)
    make_videos(box)
    make_configs(box)
    # The checkpoint lives in the sandbox: evaluate.py and predict.py must leave it alone too. One thread, as the
    # children run, and no thread pool left running for them to inherit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_script.main(TINY_TRAIN + ["--run_dir", box.path("inputs", "trained")]) == 0
    finally:
        torch.set_num_threads(threads)
    make_checkpoints(box, box.path("inputs", "trained", "checkpoints", "latest.pt"))
    return box


# ---------------------------------------------------------------------------------------------------------------
# Drawing a case: a base configuration, then flags from the script's parser.

def base_variants(script, box, out):
    """The valid configurations each case of `script` starts from, by name."""
    if script == "train.py":
        base = TINY_TRAIN + ["--run_dir", out]
        return {"generated": base, "npy": base + ["--data", box.good["npy"]]}
    checkpoint = box.good["checkpoint"]
    if script == "evaluate.py":
        base = ["--checkpoint", checkpoint, "--out_dir", out, "--num_test", "2", "--batch_size", "2", "--device", "cpu"]
        return {"generated": base, "npy": base + ["--data", box.good["npy"]]}
    base = ["--checkpoint", checkpoint, "--out", out, "--device", "cpu"]
    variants = {"npy": base + ["--input", box.good["npy"]], "frames": base + ["--input", box.good["frames"]]}
    if box.has_video:
        variants["mp4"] = base + ["--input", box.good["mp4"], "--channels", "1"]
    return variants


def output_value(rng, box, case):
    """A value for the flag naming the output: mostly a new directory, else one that cannot work or already holds
    something. What it names is made here, per case, so that no case sees another's leftovers."""
    fresh = box.path("out", case)
    choice = rng.choice(["fresh", "fresh", "nested", "existing_file", "full_dir", "", "under_file", "proc", "long"])
    if choice == "existing_file":
        with open(fresh, "w") as handle:
            handle.write("not a directory")
    elif choice == "full_dir":
        os.makedirs(fresh)
        with open(os.path.join(fresh, "keep.txt"), "w") as handle:
            handle.write("someone's file")
    values = {"fresh": fresh, "nested": os.path.join(fresh, "a", "b"), "existing_file": fresh, "full_dir": fresh,
              "": "", "under_file": os.path.join(box.good["npy"], "out"), "proc": "/proc/x/out",
              "long": f"{case}_" + "n" * 300}
    return values[choice]


def string_value(rng, box, dest):
    kind = next((kind for word, kind in KIND_WORDS.items() if word in dest), None)
    if kind and rng.random() < 0.7:
        return rng.choice(box.kinds[kind])
    everything = [path for paths in box.kinds.values() for path in paths] + ODD_STRINGS
    return rng.choice(everything).format(root=box.root)


def flag_args(action, rng, box, output_flag, case):
    """The argv words of one fuzzed flag: the flag, then a value drawn by its type, choices and nargs."""
    if output_flag in action.option_strings:  # by this name, which output_of() looks for
        return [output_flag, output_value(rng, box, case)]
    flag = rng.choice(action.option_strings)
    if action.nargs == 0:  # store_true and the like
        return [flag]
    if action.dest in ONLY_VALUE:
        return [flag, ONLY_VALUE[action.dest]]
    if action.nargs == "?" and rng.random() < 0.25:
        return [flag]
    if action.choices is not None:
        choices = [choice for choice in action.choices if choice not in NOT_DRAWN.get(action.dest, ())]
        return [flag, str(rng.choice(choices)) if rng.random() < 0.75 else "bogus"]
    if action.type is int:
        return [flag, rng.choice([n for n in INTS if n != str(10**12)] if action.dest in LONG_WORK else INTS)]
    if action.type is float:
        return [flag, rng.choice(FLOATS)]
    if action.type in (None, str):
        return [flag, string_value(rng, box, action.dest)]
    return [flag, rng.choice(WORDS)]


def draw_case(script, index, box):
    """The argv of case `index` of `script`, from its own random stream: each case is independent of the others."""
    rng = random.Random(f"{SEED}:{script}:{index}")
    _, build_parser, output_flag = SCRIPTS[script]
    case = f"{script.removesuffix('.py')}_{index}"
    out = box.path("runs" if script == "train.py" else "out", case)
    variants = base_variants(script, box, out)
    argv = list(variants[rng.choice(sorted(variants))])
    actions = [a for a in build_parser()._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    for action in rng.sample(actions, rng.randint(1, 3)):
        argv += flag_args(action, rng, box, output_flag, case)
    return argv


def output_of(argv, output_flag):
    """The last value given to the output flag (argparse keeps the last)."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == output_flag]
    return values[-1] if values else None


# ---------------------------------------------------------------------------------------------------------------
# Running a case in a forked child.

def exit_status(code):
    """What the interpreter would exit with for main's result or SystemExit's code."""
    if code is None:
        return 0
    if isinstance(code, int) and 0 <= code <= 255:
        return code
    if isinstance(code, str):  # sys.exit("message") prints it and exits 1
        print(code, file=sys.stderr)
        return 1
    print(f"fuzz harness: main gave exit status {code!r}, which no process can exit with", file=sys.stderr)
    return 71


def limit_forks(limit):
    """After `limit` forks, os.fork fails as it would at a process limit (root has none: RLIMIT_NPROC spares it)."""
    real_fork, count = os.fork, [0]

    def fork():
        count[0] += 1
        if count[0] > limit:
            raise BlockingIOError(errno.EAGAIN, f"fork refused by the fuzz harness after {limit} forks")
        return real_fork()

    os.fork = fork


def virtual_size():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))


def exit_now(code):
    """Leave the child at once: no atexit handlers (pytest's are the parent's), no finalizers. Called inside the except
    blocks too, so that a DataLoader left in the traceback's frames is not shut down worker by worker (5 s each)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def child(script, argv, cwd, stdout_path, stderr_path):
    """In the forked child: limits, stdout/stderr to files, main(argv); never returns."""
    try:
        os.setpgid(0, 0)  # its own group: the parent kills the child with whatever it started
        limit = virtual_size() + MEMORY_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        limit_forks(FORK_LIMIT)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, stdout_path), (2, stderr_path)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        # pytest's capture replaced sys.stdout and sys.stderr: point them at fds 1 and 2 again.
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        faulthandler.enable(sys.stderr)
        os.chdir(cwd)
        torch.set_num_threads(1)
        sys.argv = [str(REPO / script), *argv]  # argparse names the script by it in its messages
    except BaseException:
        traceback.print_exc()
        exit_now(72)
    try:
        result = SCRIPTS[script][0](argv)
    except SystemExit as exit:
        exit_now(exit_status(exit.code))
    except BaseException:
        print("fuzz harness: an exception escaped main():", file=sys.stderr)
        traceback.print_exc()
        exit_now(70)
    exit_now(exit_status(result))


def run_case(script, argv, box, name):
    """Run main(argv) of `script` in a forked child in the sandbox: (exit status or None if it hung, stderr)."""
    stdout_path, stderr_path = (os.path.join(box.logs, f"{name}.{ext}") for ext in ("out", "err"))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(script, argv, box.root, stdout_path, stderr_path)
    try:
        os.setpgid(pid, pid)  # also here, so that the group exists whoever runs first
    except OSError:
        pass  # the child set it already, or has exited
    deadline, status = time.monotonic() + CASE_TIMEOUT_S, None
    while status is None and time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(raw) if done else None
        if status is None:
            time.sleep(0.01)
    try:
        os.killpg(pid, signal.SIGKILL)  # a hung child, or what it left running (DataLoader workers)
    except ProcessLookupError:
        pass
    if status is None:
        os.waitpid(pid, 0)
    with open(stderr_path, errors="replace") as handle:
        return status, handle.read()


# ---------------------------------------------------------------------------------------------------------------
# The sandbox before and after.

_digests = {}


def digest(path, st):
    """sha1 of a small file, cached by what would change with its content."""
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _digests:
        with open(path, "rb") as handle:
            _digests[key] = hashlib.sha1(handle.read()).hexdigest()
    return _digests[key]


def snapshot(root):
    """{relative path: (size, mtime_ns, is_dir, sha1 of a small file or a link's target)}, links not followed."""
    entries = {".": (0, os.lstat(root).st_mtime_ns, True, None)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode) and st.st_size <= HASHED_BYTES:
                content = digest(path, st)
            else:
                content = None
            entries[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, stat.S_ISDIR(st.st_mode), content)
    return entries


def changes(before, after, root, output):
    """What changed outside `output` (a path as given on the command line, relative to root; "" or None: none).
    Directories above the output may be made, and their size and mtime move as it is made."""
    exempt = os.path.relpath(os.path.normpath(os.path.join(root, output)), root) if output else None
    above = set()
    if exempt and not exempt.startswith(".."):
        parent = os.path.dirname(exempt)
        while parent:
            above.add(parent)
            parent = os.path.dirname(parent)
        above.add(".")
    found = []
    for rel in sorted(before.keys() | after.keys()):
        old, new = before.get(rel), after.get(rel)
        if old == new or (exempt and (rel == exempt or rel.startswith(exempt + os.sep))):
            continue
        if rel in above and (old is None or old[2]) and (new is None or new[2]):
            continue
        what = "made" if old is None else "removed" if new is None else "changed"
        found.append(f"{rel} {what}")
    return found


# ---------------------------------------------------------------------------------------------------------------
# The checks.

def check_case(box, script, argv, name):
    before = snapshot(box.root)
    status, stderr = run_case(script, argv, box, name)
    touched = changes(before, snapshot(box.root), box.root, output_of(argv, SCRIPTS[script][2]))
    problems = []
    if status not in (0, 1, 2):
        problems.append(f"hung: killed after {CASE_TIMEOUT_S} s" if status is None else
                        f"exit status {status}" + (f" (signal {signal.Signals(-status).name})" if status < 0 else ""))
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    if touched:
        problems.append(f"changed outside its output: {', '.join(touched[:10])}")
    env = "TRITON_INTERPRET=1 " if os.environ.get("TRITON_INTERPRET") else ""
    lines = stderr.rstrip().splitlines()
    errors = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line)]
    message = (f"{script} case {name}: {'; '.join(problems)}\n  exit status: {status}\n  argv: {json.dumps(argv)}\n"
               f"  rerun: cd {shlex.quote(box.root)} && {env}python {REPO / script} {shlex.join(argv)}\n"
               f"  exception: {errors[-1] if errors else '-'}\n"
               f"  stderr ({os.path.join(box.logs, name + '.err')}), last lines:\n" + "\n".join(lines[-20:]))
    return problems, message


BASES = [("train.py", "generated"), ("train.py", "npy"), ("evaluate.py", "generated"), ("evaluate.py", "npy"),
         ("predict.py", "npy"), ("predict.py", "frames"), ("predict.py", "mp4")]


@pytest.mark.parametrize("script, variant", BASES, ids=[f"{s}-{v}" for s, v in BASES])
def test_base_configuration_passes(box, script, variant):
    """Each base the fuzz cases start from runs cleanly: else every case would fail for one unrelated reason."""
    if variant == "mp4" and not box.has_video:
        pytest.skip("PyAV is missing (pip install av): no video inputs are fuzzed")
    name = f"base_{script.removesuffix('.py')}_{variant}"
    argv = base_variants(script, box, box.path("runs" if script == "train.py" else "out", name))[variant]
    problems, message = check_case(box, script, argv, name)
    assert not problems, message


FUZZ_CASES = [(script, index) for script in SCRIPTS for index in range(CASES[script])]


@pytest.mark.parametrize("script, index", FUZZ_CASES, ids=[f"{s}-{i}" for s, i in FUZZ_CASES])
def test_fuzz(box, script, index):
    argv = draw_case(script, index, box)
    problems, message = check_case(box, script, argv, f"{script.removesuffix('.py')}_{index}")
    assert not problems, message
