"""Take a trained model out: its forecast as an ONNX file or a torch.export program (.pt2), for any registered model.

The exported graph is forecast(model, x, n_out) with n_in and n_out fixed (the recurrence unrolled when traced) and the
batch dynamic, for frames of the training size. ONNX has no kernel for the fused gate op, and a .pt2 should load
without this package's extensions, so the model is loaded with backend "torch": the reference gate math, the same
numbers as the fused kernels to float rounding.

    program = torch.export.load("model.pt2"); y = program.module()(x)          # torch only, no convlstm needed
    session = onnxruntime.InferenceSession("model.onnx"); y, = session.run(None, {"x": x.numpy()})

x is float32 (B, n_in, C, H, W) in [0, 1]; y is (B, n_out, C, H, W) in the layout of x (OpenSTL's model: unclipped).
"""
from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .atomic import write_file
from .model import forecast

FORMATS = ("onnx", "pt2")
EXAMPLE_BATCH = 2  # traced at 2 (torch.export specializes sizes 0 and 1), dynamic from 1 up
MAX_BATCH = 65536


class Forecast(nn.Module):
    """forward(x) = the next n_out frames of x: convlstm.model.forecast with n_out fixed."""

    def __init__(self, model: nn.Module, n_out: int):
        super().__init__()
        self.model, self.n_out = model, n_out

    def forward(self, x):
        return forecast(self.model, x, self.n_out)


def exported_program(model: nn.Module, n_out: int | None = None) -> torch.export.ExportedProgram:
    """torch.export's program of a loaded model's forecast (convlstm.load_model(..., backend="torch")): input x of
    shape (batch, info.n_in, info.in_chan, H, W) with (H, W) the training frame size (64x64 when unknown)."""
    info = model.info
    height, width = info.frame_size or (64, 64)
    device = next(model.parameters()).device  # the program runs where it was traced (its zero states are made there)
    example = torch.rand(EXAMPLE_BATCH, info.n_in, info.in_chan, height, width, device=device)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(Forecast(model.eval(), n_out or info.n_out), (example,),
                                   dynamic_shapes={"x": {0: batch}})


def export_model(model: nn.Module, path: str, fmt: str, n_out: int | None = None) -> None:
    """Write the forecast of `model` (loaded with backend "torch") to `path` as `fmt` ("onnx" or "pt2"), through a
    temp file renamed into place (convlstm.atomic: a failed write leaves nothing). n_out: frames to predict (default
    the checkpoint's). ONNX needs the `onnx` and `onnxscript` packages (pip install convlstm[export])."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    program = exported_program(model, n_out)
    if fmt == "pt2":
        write_file(path, lambda handle: torch.export.save(program, handle))
        return
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    try:  # quiet: torch.onnx warns of torchvision ops it skips and of deprecated pytree names, none ours
        onnx_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            onnx_program = torch.onnx.export(program, dynamo=True, input_names=["x"], output_names=["y"],
                                             verbose=False)
    finally:
        onnx_log.setLevel(level)
    write_file(path, lambda handle: handle.write(onnx_program.model_proto.SerializeToString()))
