"""Evaluate a checkpoint on Moving MNIST or your own sequences in the published tables' conventions.

The body is convlstm/cli/evaluate.py (its docstring says more); `python evaluate.py --help` lists the flags."""
import sys

from convlstm.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
