"""convlstm: ConvLSTM video prediction in plain PyTorch, with fused gate kernels on the hot path.

Layers: ops/ (the fused ops beside their references), cell.py and openstl.py (the modules), models/ (a file per
model and the registry; model.py's model_from_config and forecast build and run any of them), data/, config.py,
checkpoint.py, load.py and runtime.py (shared by training and inference), training/ (train.py's own parts),
evaluation/ (metrics, figures), cli/ (the scripts' bodies).
"""
from .cell import ConvLSTM, ConvLSTMCell
from .data import MovingMNIST, StandardMovingMNIST
from .load import load_model
from .model import EncoderDecoderConvLSTM, forecast, model_from_config
from .models import register_model
from .openstl import OpenSTLConvLSTM
from .ops.lstm_gates import available_backends, lstm_gates, lstm_gates_ref

__version__ = "0.1.0"

__all__ = ["ConvLSTMCell", "ConvLSTM", "EncoderDecoderConvLSTM", "OpenSTLConvLSTM", "model_from_config", "forecast",
           "load_model", "register_model", "lstm_gates", "lstm_gates_ref", "available_backends", "MovingMNIST",
           "StandardMovingMNIST", "__version__"]
