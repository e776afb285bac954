"""convlstm: ConvLSTM video prediction in plain PyTorch, with fused gate kernels on the hot path.

Layers: ops/ (the fused ops beside their references), cell.py, model.py and openstl.py (the modules; model.py's
model_from_config and forecast build and run either model), data/, training/ (config, checkpoints, distributed
set-up, mixed precision, logs), evaluation/ (metrics, figures).
"""
from .cell import ConvLSTM, ConvLSTMCell
from .data import MovingMNIST, StandardMovingMNIST
from .load import load_model
from .model import EncoderDecoderConvLSTM, forecast, model_from_config
from .openstl import OpenSTLConvLSTM
from .ops.lstm_gates import available_backends, lstm_gates, lstm_gates_ref

__version__ = "0.1.0"

__all__ = ["ConvLSTMCell", "ConvLSTM", "EncoderDecoderConvLSTM", "OpenSTLConvLSTM", "model_from_config", "forecast",
           "load_model", "lstm_gates", "lstm_gates_ref", "available_backends", "MovingMNIST", "StandardMovingMNIST",
           "__version__"]
