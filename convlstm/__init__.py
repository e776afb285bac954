"""convlstm: ConvLSTM video prediction in plain PyTorch, with fused gate kernels on the hot path."""
from .backends import available_backends
from .cell import ConvLSTM, ConvLSTMCell
from .data import MovingMNIST, StandardMovingMNIST
from .lstm_gates import lstm_gates, lstm_gates_ref
from .model import EncoderDecoderConvLSTM

__version__ = "0.1.0"

__all__ = ["ConvLSTMCell", "ConvLSTM", "EncoderDecoderConvLSTM", "lstm_gates", "lstm_gates_ref",
           "available_backends", "MovingMNIST", "StandardMovingMNIST", "__version__"]
