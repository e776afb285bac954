"""Predict the next frames of your own sequences with a trained model (the tutorial's or OpenSTL's ConvLSTM); no ground truth needed.

The body is convlstm/cli/predict.py (its docstring says more); `python predict.py --help` lists the flags."""
import sys

from convlstm.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
