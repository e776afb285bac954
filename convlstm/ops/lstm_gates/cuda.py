"""lstm_gates on the CUDA extension: csrc/lstm_gates.cu (kernels and launchers, no PyTorch header) and
csrc/lstm_gates_cuda.cpp (the PyTorch binding).

The extension is `convlstm.ops.lstm_gates._cuda` when setup.py built it (CUDA PyTorch and nvcc present, or
CONVLSTM_FORCE_BUILD=TRUE) from the sources as they are now; otherwise (never built, it fails to import, or it was
built from other sources: stamp.py) it is JIT-built with ninja on first use on a GPU (about a minute, cached in the
torch extensions folder). Ops: `convlstm::lstm_gates_cuda` and `convlstm::lstm_gates_cuda_backward`.
Whether the backend can run is found once per process (backends.unavailable_reason): no nvcc for a needed build, or
kernels that do not launch on this GPU (built for older architectures without PTX), make it unavailable with the
reason, and "auto" falls back to Triton, saying why. This module imports on any machine.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os

import torch

from .op import define_extension_ops, gate_function
from .stamp import CUDA_SOURCES, SOURCE_DIR, sources_sha, stamp_flag

PREBUILT = f"{__package__}._cuda"
# Same flags as setup.py's build (torch adds the C++ standard it needs). No --use_fast_math: the kernel is
# memory-bound, and exact expf/tanhf keep float32 results within a few ulp of the reference.
NVCC_FLAGS = ["-O3"]
log = logging.getLogger(__name__)


def _prebuilt():
    """setup.py's extension if it imports and was built from the current sources, else None (the reason logged)."""
    if importlib.util.find_spec(PREBUILT) is None:
        return None
    try:
        module = importlib.import_module(PREBUILT)
    except ImportError as error:  # e.g. built against another torch
        log.warning("lstm_gates: the prebuilt CUDA extension does not import (%s); JIT-building it instead", error)
        return None
    built, now = getattr(module, "sources_sha", None), sources_sha(CUDA_SOURCES)
    if built != now:
        log.warning("lstm_gates: the prebuilt CUDA extension was built from other sources (stamp %s, sources now %s: "
                    "rerun pip install -e .); JIT-building it instead", built, now)
        return None
    return module


def nvcc_missing() -> str | None:
    """Why a JIT build cannot run (no nvcc where torch looks for it), or None."""
    # Imported here, not at the top: with a CUDA build of PyTorch on a machine without a GPU, importing
    # cpp_extension logs "No CUDA runtime is found" (torch 2.11), which every CPU user would see on the first step.
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return (f"the cuda backend needs a build (no current prebuilt extension) and nvcc is not found "
                f"(CUDA_HOME {CUDA_HOME}; set CUDA_HOME or put nvcc on PATH)")
    return None


@functools.cache
def extension():
    """The prebuilt extension if it is current, else a JIT build (first call on a GPU machine)."""
    module = _prebuilt()
    if module is not None:
        return module
    reason = nvcc_missing()
    if reason:
        raise RuntimeError(reason)
    from torch.utils import cpp_extension
    sources = [str(SOURCE_DIR / "lstm_gates_cuda.cpp"), str(SOURCE_DIR / "lstm_gates.cu")]
    stamp = stamp_flag(CUDA_SOURCES)
    return cpp_extension.load(name="convlstm_lstm_gates_cuda", sources=sources, extra_cflags=["-O3", stamp],
                              extra_cuda_cflags=NVCC_FLAGS + [stamp], verbose=False)


def runs_on(device: torch.device) -> str | None:
    """None if the CUDA kernels run on `device`, else the reason. Loads (or JIT-builds) the extension, then launches
    the forward on one element: an extension built without code for this GPU (no sm_XY and no PTX it can JIT) loads
    but fails there with "no kernel image is available"."""
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors only, not {device}"
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return "the cuda backend needs a CUDA build of PyTorch and a GPU"
    try:
        ext = extension()
    except RuntimeError as error:
        return str(error)
    gates, c_prev = torch.zeros(1, 4, 1, 1, device=device), torch.zeros(1, 1, 1, 1, device=device)
    try:
        h_next, _ = ext.forward(gates, c_prev, None, None, None, False, 2)
        torch.cuda.synchronize(device)
    except RuntimeError as error:
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        return f"the cuda extension's kernels do not run on {name} (sm_{major}{minor}): {error}"
    if h_next.item() != 0.0:  # sigmoid(0) * tanh(0 * 0 + 0.5 * 0)
        return f"the cuda extension's kernels gave {h_next.item()} for 0 on a one-element check"
    return None


lstm_gates_cuda_run = define_extension_ops("cuda", "cuda", extension)


# `lstm_gates_ref` on the CUDA kernels; same arguments and dtype policy as `lstm_gates`.
lstm_gates_cuda = gate_function(lstm_gates_cuda_run)
