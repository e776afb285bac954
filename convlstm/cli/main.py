"""`convlstm`, the installed command: `convlstm train|evaluate|predict|export ...` runs the same program as
`python train.py ...` (each subcommand's --help lists its flags); `convlstm bench NAME ...` runs
benchmarks/bench_NAME.py of a checkout; `convlstm --version`. A subcommand's module is imported only when chosen, so
evaluating never imports the training package."""
from __future__ import annotations

import importlib
import pathlib
import runpy
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"  # a checkout's (pip install -e .)

COMMANDS = {
    "train": ("convlstm.cli.train", "train a model (train.py)"),
    "evaluate": ("convlstm.cli.evaluate", "score a checkpoint against the baselines (evaluate.py)"),
    "predict": ("convlstm.cli.predict", "predict the next frames of your sequences (predict.py)"),
    "export": ("convlstm.cli.export", "write a checkpoint's forecast as ONNX or a torch.export program"),
    "bench": (None, "run a benchmark of the checkout: convlstm bench NAME ... is python benchmarks/bench_NAME.py ..."),
}


def exit_status(stopped: SystemExit) -> int:
    """The status a SystemExit ends the process with: its int, 0 for None, 1 for a message."""
    return stopped.code if isinstance(stopped.code, int) else (0 if stopped.code is None else 1)


def bench(argv) -> int:
    """benchmarks/bench_<argv[0]>.py with the rest of argv, as `python benchmarks/bench_<name>.py` runs it."""
    names = sorted(path.stem[len("bench_"):] for path in BENCHMARKS.glob("bench_*.py"))
    if not names:
        print(f"convlstm bench: error: no benchmarks/ beside the package ({BENCHMARKS}): the benchmarks come with a "
              "checkout of the repository (pip install -e .)", file=sys.stderr)
        return 1
    if not argv or argv[0] in ("-h", "--help"):  # asked for: stdout, exit 0; a missing name: stderr, exit 2
        print(f"usage: convlstm bench {{{','.join(names)}}} ...  (convlstm bench NAME --help lists its flags)",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in names:
        print(f"convlstm bench: error: no benchmark {argv[0]!r} (choose from {', '.join(names)})", file=sys.stderr)
        return 2
    path = BENCHMARKS / f"bench_{argv[0]}.py"
    saved_path, saved_argv = list(sys.path), list(sys.argv)
    sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import benchutil and make_table beside them
    sys.argv = [str(path), *argv[1:]]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stopped:
        return exit_status(stopped)
    finally:
        sys.path[:], sys.argv[:] = saved_path, saved_argv
    return 0


def usage() -> str:
    lines = ["usage: convlstm {" + ",".join(COMMANDS) + "} ... | --version", "", "commands:"]
    lines += [f"  {name:10s}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "convlstm COMMAND --help lists the command's flags."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if argv[:1] == ["--version"]:
        from convlstm import __version__
        print(f"convlstm {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command"
        print(f"{usage()}\nconvlstm: error: {given} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if argv[0] == "bench":
        return bench(argv[1:])
    module = importlib.import_module(COMMANDS[argv[0]][0])
    program, sys.argv[0] = sys.argv[0], f"convlstm {argv[0]}"  # argparse's prog in the subcommand's messages
    try:
        return module.main(argv[1:]) or 0
    except SystemExit as stopped:  # evaluate.py's main and argparse end with sys.exit
        return exit_status(stopped)
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
