"""lstm_gates: one ConvLSTM step's gate math, fused. One folder holds the op from spec to kernels:

  ref.py              lstm_gates_ref, the spec (pure PyTorch), and the argument checks
  backends.py         which implementation runs: the choice made once per device
  op.py               what the fused backends share: dtype and layout policy, autograd, custom-op registration
  triton_kernels.py   the Triton kernels (@triton.jit);  triton_launcher.py  their grid and torch.library ops
  csrc/               the CUDA kernels (lstm_gates.cu, no PyTorch header), their PyTorch binding and the CPU twin
  cuda.py, cpu_twin.py  loading (or JIT-building) those extensions, and their ops
"""
from .backends import BACKENDS, available_backends, resolve
from .ref import check_inputs, lstm_gates_ref


def lstm_gates(gates, c_prev, w_ci=None, w_cf=None, w_co=None, backend="auto", gate_order="ifog"):
    """The gate math of `lstm_gates_ref` on the chosen backend: "auto", "torch", "triton", "cuda" or "cpu_twin"
    (see backends.py). gates (B, 4C, H, W), c_prev (B, C, H, W), peephole weights (C, 1, 1) or None.
    gate_order: the order of gates' four channel blocks, "ifog" (i, f, o, g: the widely used ConvLSTMCell) or
    "ifgo" (i, f, g, o: OpenSTL's ConvLSTM); the kernels read it as is (no reordering) and the gradient of gates
    comes back in the same order. Anything else is a ValueError.
    Returns (h_next, c_next), each (B, C, H, W) in torch.promote_types(gates.dtype, c_prev.dtype) on every
    backend; the fused ones compute in float32 (float64 for float64) whatever the storage dtype.
    The backend is looked up on every call here; modules (ConvLSTMCell) resolve it once and call the function."""
    name, gates_fn = resolve(backend, gates.device)
    if name == "torch":  # the fused functions check their own arguments
        check_inputs(gates, c_prev, w_ci, w_cf, w_co)
    return gates_fn(gates, c_prev, w_ci, w_cf, w_co, gate_order=gate_order)


__all__ = ["BACKENDS", "available_backends", "lstm_gates", "lstm_gates_ref", "resolve"]
