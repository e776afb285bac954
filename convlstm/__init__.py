"""convlstm: ConvLSTM video prediction in plain PyTorch, with fused gate kernels on the hot path.

Layers: ops/ (the fused ops beside their references), cell.py and model.py (the modules), data/, training/
(config, checkpoints, distributed set-up, mixed precision, logs), evaluation/ (metrics, figures).
"""
from .cell import ConvLSTM, ConvLSTMCell
from .data import MovingMNIST, StandardMovingMNIST
from .load import load_model
from .model import EncoderDecoderConvLSTM
from .ops.lstm_gates import available_backends, lstm_gates, lstm_gates_ref

__version__ = "0.1.0"

__all__ = ["ConvLSTMCell", "ConvLSTM", "EncoderDecoderConvLSTM", "load_model", "lstm_gates", "lstm_gates_ref",
           "available_backends", "MovingMNIST", "StandardMovingMNIST", "__version__"]
