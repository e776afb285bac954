"""lstm_gates "cpu_twin": the CUDA kernels' thread bodies (csrc/lstm_gates.cuh: per-element math, indexing,
the grid's cover of the elements) compiled for the CPU with g++ and run for every thread of the grid the CUDA
launchers would launch (csrc/lstm_gates_cpu.cpp), so tests on a machine without a GPU check the code the
CUDA kernels run against `lstm_gates_ref`. The raw extension's forward/backward take `grid=` (blocks; 0 = the
launcher's) and `int64_index=`, so tests run what on a GPU only huge inputs reach: the grid-stride loop (over 2^28
elements) and the int64 instantiation of the indexing (over 4.7e8).

A test/debug backend ("cpu_twin"), never picked by "auto". It is built with ninja on first use (about 40 s on two
cores) and cached in the torch extensions folder ($TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions).
Ops: `convlstm::lstm_gates_cpu_twin` and `convlstm::lstm_gates_cpu_twin_backward` (custom ops with fake tensors
registered, so torch.compile keeps them in the graph).
"""
from __future__ import annotations

import functools
import os
import shutil
import torch

from .op import define_extension_ops, gate_function
from .stamp import SOURCE_DIR, stamp_flag

SOURCES = ("lstm_gates_cpu.cpp", "lstm_gates.cuh", "lstm_gates_torch.h")


@functools.cache
def extension():
    """Build (first time) and load the CPU twin extension."""
    from torch.utils import cpp_extension  # imported on use: see cuda.extension
    sources = [str(SOURCE_DIR / "lstm_gates_cpu.cpp")]
    return cpp_extension.load(name="convlstm_lstm_gates_cpu_twin", sources=sources,
                              extra_cflags=["-O3", stamp_flag(SOURCES)], verbose=False)


def runs_on(device: torch.device) -> str | None:
    """None if the CPU twin can run on `device` (it builds on first use), else the reason it cannot."""
    if device.type != "cpu":
        return f"the cpu_twin backend runs on CPU tensors only, not {device}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"the cpu_twin backend needs a C++ compiler to build, and {compiler!r} is not on PATH"
    if shutil.which("ninja") is None:  # what cpp_extension.load runs
        return "the cpu_twin backend needs ninja to build (pip install ninja)"
    return None


lstm_gates_cpu_twin_run = define_extension_ops("cpu_twin", "cpu", extension)


# `lstm_gates_ref` on the CPU twin of the CUDA kernels; same arguments and dtype policy as `lstm_gates`.
lstm_gates_cpu_twin = gate_function(lstm_gates_cpu_twin_run)
