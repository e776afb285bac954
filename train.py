"""Train a ConvLSTM on Moving MNIST or your own sequences: plain PyTorch, DistributedDataParallel, torch.amp.

The body is convlstm/cli/train.py (its docstring says more); `python train.py --help` lists the flags."""
import sys

from convlstm.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
