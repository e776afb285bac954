"""lstm_gates on the CUDA extension: csrc/lstm_gates.cu (kernels and launchers, no PyTorch header) and
csrc/lstm_gates_cuda.cpp (the PyTorch binding).

The extension is `convlstm.ops.lstm_gates._cuda` when setup.py built it (CUDA PyTorch and nvcc present, or
CONVLSTM_FORCE_BUILD=TRUE); otherwise it is JIT-built with ninja on first use on a GPU (about a minute, cached in
the torch extensions folder). Ops: `convlstm::lstm_gates_cuda` and `convlstm::lstm_gates_cuda_backward`.
This module imports on any machine; backends.py decides whether the backend can run.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from .op import SOURCE_DIR, define_extension_ops, gate_function, headers_stamp

PREBUILT = f"{__package__}._cuda"
HEADERS = ("lstm_gates.cuh", "lstm_gates.h", "lstm_gates_torch.h")
# Same flags as setup.py's build (torch adds the C++ standard it needs). No --use_fast_math: the kernel is
# memory-bound, and exact expf/tanhf keep float32 results within a few ulp of the reference.
NVCC_FLAGS = ["-O3"]


@functools.cache
def extension():
    """The prebuilt extension if setup.py built one, else a JIT build (first call on a GPU machine)."""
    if importlib.util.find_spec(PREBUILT) is not None:
        return importlib.import_module(PREBUILT)
    # Imported here, not at the top: with a CUDA build of PyTorch on a machine without a GPU, importing
    # cpp_extension logs "No CUDA runtime is found" (torch 2.11), which every CPU user would see on the first step.
    from torch.utils import cpp_extension
    sources = [str(SOURCE_DIR / "lstm_gates_cuda.cpp"), str(SOURCE_DIR / "lstm_gates.cu")]
    return cpp_extension.load(name="convlstm_lstm_gates_cuda", sources=sources,
                              extra_cflags=["-O3", headers_stamp(SOURCE_DIR, HEADERS)],
                              extra_cuda_cflags=NVCC_FLAGS, verbose=False)


def runs_on(device: torch.device) -> str | None:
    """None if the CUDA kernels can run on `device`, else the reason. Loads (or JIT-builds) the extension."""
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors only, not {device}"
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return "the cuda backend needs a CUDA build of PyTorch and a GPU"
    extension()
    return None


lstm_gates_cuda_run = define_extension_ops("cuda", "cuda", extension)


# `lstm_gates_ref` on the CUDA kernels; same arguments and dtype policy as `lstm_gates`.
lstm_gates_cuda = gate_function(lstm_gates_cuda_run)
