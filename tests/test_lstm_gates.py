"""lstm_gates on every backend that runs here, against lstm_gates_ref.

On a CPU machine: "torch", "triton" (Triton's interpreter, set up by conftest.py) and "cpu_twin" (the CUDA kernels'
thread bodies compiled by g++). On a GPU machine the same test bodies also run on "cuda" tensors with the
"torch", "triton" (compiled) and "cuda" backends. Which backends each machine must run is written out in
helpers.py: an expected backend that fails to load fails its cases; only pairs not expected here (CUDA tensors
without a GPU) are skipped, with the reason.

Gate order: the tests run the default order of gates' channel blocks, i, f, o, g ("ifog"); the fused backends also
run "ifgo" (OpenSTL's i, f, g, o) against the reference on a subset (float64, float32, bfloat16; NCHW and
channels_last; plain and peephole), in a float64 gradcheck, under torch.compile and with one output unused, and
every backend checks that "ifgo" is "ifog" on gates with blocks 2 and 3 swapped, its gradient swapped back.

Tolerances, against the reference computed in float64 from the same stored inputs:
  float64  atol 1e-12, rtol 1e-10  (all backends)
  float32  atol 1e-5,  rtol 1e-5   (all backends)
  bfloat16 atol 1e-3,  rtol 1.6e-2 (2 ulp) for the fused backends, which compute in float32 and round once;
           atol 0.1,   rtol 0.1 for eager torch, which rounds every intermediate to bfloat16
  float16  atol 1e-4,  rtol 2e-3 (2 ulp) fused; atol 2e-2, rtol 2e-2 eager torch
"""
import functools

import pytest
import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import TorchDispatchMode

from convlstm import ConvLSTMCell, EncoderDecoderConvLSTM, available_backends, lstm_gates, lstm_gates_ref
from convlstm.ops.lstm_gates.backends import fused_run, resolve, unavailable_reason
from convlstm.ops.lstm_gates.op import prepare
from convlstm.ops.lstm_gates.triton_kernels import _tile
from helpers import (CUDA, DEVICE_BACKENDS, EXPECTED_BACKENDS, FUSED, TRITON_INTERPRET, device_backend_cases,
                     exact_cudnn, gpu_test, single_process_group)

SHORT = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
TOLERANCE = {  # (dtype, fused) -> (atol, rtol)
    (torch.float64, True): (1e-12, 1e-10), (torch.float64, False): (1e-12, 1e-10),
    (torch.float32, True): (1e-5, 1e-5), (torch.float32, False): (1e-5, 1e-5),
    (torch.bfloat16, True): (1e-3, 1.6e-2), (torch.bfloat16, False): (0.1, 0.1),
    (torch.float16, True): (1e-4, 2e-3), (torch.float16, False): (2e-2, 2e-2),
}


def make_inputs(shape, dtype, device, layout="contiguous", peephole=False, seed=0):
    """gates (B, 4C, H, W), c_prev (B, C, H, W) and the peephole weights (or Nones), all leaves needing grad."""
    b, c, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    gates = torch.randn(b, 4 * c, h, w, generator=generator, dtype=torch.float64) * 2
    c_prev = torch.randn(b, c, h, w, generator=generator, dtype=torch.float64)
    weights = [torch.randn(c, 1, 1, generator=generator, dtype=torch.float64) for _ in range(3)]
    gates, c_prev = gates.to(device, dtype), c_prev.to(device, dtype)
    if layout == "channels_last":
        gates, c_prev = (t.contiguous(memory_format=torch.channels_last) for t in (gates, c_prev))
    elif layout == "noncontiguous":  # every other row of a taller tensor, and a transposed c_prev
        gates = torch.cat([gates, gates], dim=2)[:, :, ::2]
        c_prev = c_prev.transpose(2, 3).contiguous().transpose(2, 3)
        assert not gates.is_contiguous() and not c_prev.is_contiguous()
    weights = [w.to(device, dtype).requires_grad_() for w in weights] if peephole else [None, None, None]
    return gates.requires_grad_(), c_prev.requires_grad_(), weights


def run_with_grads(fn, gates, c_prev, weights, grad_h, grad_c):
    """Outputs of fn and the gradients of every input for the given output gradients (None: output unused).
    An input the used outputs do not depend on (w_co when only c_next is used) gets a zero gradient."""
    h_next, c_next = fn(gates, c_prev, *weights)
    outputs = [o for o, g in ((h_next, grad_h), (c_next, grad_c)) if g is not None]
    grads = [g for g in (grad_h, grad_c) if g is not None]
    inputs = [t for t in (gates, c_prev, *weights) if t is not None]
    input_grads = torch.autograd.grad(outputs, inputs, grads, allow_unused=True, materialize_grads=True)
    return (h_next, c_next), input_grads


def reference_in_float64(gates, c_prev, weights, grad_h, grad_c, gate_order="ifog"):
    """lstm_gates_ref in float64 on the same stored values: the ground truth for every dtype."""
    leaf = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    return run_with_grads(functools.partial(lstm_gates_ref, gate_order=gate_order), leaf(gates), leaf(c_prev),
                          [leaf(w) for w in weights], None if grad_h is None else grad_h.double(),
                          None if grad_c is None else grad_c.double())


def assert_close(actual, expected, dtype, backend, what):
    atol, rtol = TOLERANCE[dtype, backend in FUSED]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", list(SHORT), ids=list(SHORT.values()))
@pytest.mark.parametrize("device, backend", device_backend_cases())
def test_lstm_gates_matches_reference(device, backend, dtype, layout, peephole):
    """The default gate order (no gate_order given: "ifog")."""
    check_matches_reference(device, backend, dtype, layout, peephole, lambda *a: lstm_gates(*a, backend=backend))


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_lstm_gates_ifgo_matches_reference(device, backend, dtype, layout, peephole):
    """gates in OpenSTL's order i, f, g, o, read by the kernels as they are: outputs and every gradient (grad_gates
    in the same order) against the reference told the same order."""
    check_matches_reference(device, backend, dtype, layout, peephole,
                            lambda *a: lstm_gates(*a, backend=backend, gate_order="ifgo"), gate_order="ifgo")


def check_matches_reference(device, backend, dtype, layout, peephole, fn, gate_order="ifog"):
    """fn(gates, c_prev, w_ci, w_cf, w_co) against the float64 reference in `gate_order`, within TOLERANCE."""
    gates, c_prev, weights = make_inputs((2, 3, 7, 5), dtype, device, layout, peephole)
    grad_h, grad_c = torch.randn_like(c_prev), torch.randn_like(c_prev)
    (h_next, c_next), grads = run_with_grads(fn, gates, c_prev, weights, grad_h, grad_c)
    (h_ref, c_ref), grads_ref = reference_in_float64(gates, c_prev, weights, grad_h, grad_c, gate_order)

    assert h_next.dtype == c_next.dtype == dtype
    if layout == "channels_last":  # the kernels ran on the NHWC layout and kept it
        assert h_next.is_contiguous(memory_format=torch.channels_last)
    assert_close(h_next, h_ref, dtype, backend, "h_next")
    assert_close(c_next, c_ref, dtype, backend, "c_next")
    names = ["grad_gates", "grad_c_prev", "grad_w_ci", "grad_w_cf", "grad_w_co"]
    for name, grad, grad_ref, inp in zip(names, grads, grads_ref, (gates, c_prev, *weights)):
        assert grad.dtype == inp.dtype and grad.shape == inp.shape, name
        if name.startswith("grad_w") and dtype in (torch.bfloat16, torch.float16):
            # A sum over B*H*W products: compare at the scale of the sum, not element by element.
            scale = (grads_ref[0].abs().sum() / grads_ref[0].numel() * c_prev.numel() / c_prev.shape[1]).item()
            torch.testing.assert_close(grad.double(), grad_ref, atol=2e-2 * scale, rtol=0, msg=name)
        else:
            assert_close(grad, grad_ref, dtype, backend, name)


# Channel indices that put the blocks of an "ifgo" gates tensor (i, f, g, o) in the order "ifog" (i, f, o, g) for
# C = 3: blocks 2 and 3 swapped, a permutation that is its own inverse.
IFGO_TO_IFOG = [0, 1, 2, 3, 4, 5, 9, 10, 11, 6, 7, 8]


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device, backend", device_backend_cases())
def test_lstm_gates_ifgo_is_ifog_with_gate_blocks_swapped(device, backend, layout, peephole):
    """gate_order="ifgo" reads gates as i, f, g, o: its outputs are those of the default order on gates[:, perm]
    (blocks 2 and 3 swapped), and grad_gates comes back in the input's order, i.e. the default order's gradient with
    its blocks swapped back. w_co acts on gate o wherever it sits. Bit for bit on the fused backends (the same math
    on the same values); eager torch within float32 rounding (its kernels may take other vectorised paths on the
    strided blocks)."""
    gates, c_prev, weights = make_inputs((2, 3, 7, 5), torch.float32, device, layout, peephole)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gates_ifog = gates.detach()[:, IFGO_TO_IFOG].contiguous(memory_format=fmt)
    grad_h, grad_c = torch.randn_like(c_prev), torch.randn_like(c_prev)
    outputs, grads = run_with_grads(lambda *a: lstm_gates(*a, backend=backend, gate_order="ifgo"), gates, c_prev,
                                    weights, grad_h, grad_c)
    outputs_ifog, grads_ifog = run_with_grads(lambda *a: lstm_gates(*a, backend=backend),
                                              gates_ifog.requires_grad_(), c_prev, weights, grad_h, grad_c)
    tolerance = dict(atol=0, rtol=0) if backend in FUSED else {}
    for name, actual, expected in zip(["h_next", "c_next", "grad_gates", "grad_c_prev", "grad_w_ci", "grad_w_cf",
                                       "grad_w_co"], [*outputs, *grads],
                                      [*outputs_ifog, grads_ifog[0][:, IFGO_TO_IFOG], *grads_ifog[1:]]):
        torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m: f"{name}: {m}")
    # The orders differ for these inputs, so the test would see a kernel that ignored gate_order.
    assert not torch.allclose(outputs[0], lstm_gates(gates, c_prev, *weights, backend=backend)[0])


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (0, 3, 7, 5), (1, 4, 3, 3), (2, 5, 11, 13)],
                         ids=["B1-C1-1x1", "B0-C3-7x5", "B1-C4-3x3", "B2-C5-11x13"])  # the last spans 2 programs
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_lstm_gates_odd_shapes(device, backend, shape, peephole):
    gates, c_prev, weights = make_inputs(shape, torch.float32, device, peephole=peephole)
    grad_h, grad_c = torch.randn_like(c_prev), torch.randn_like(c_prev)
    outputs, grads = run_with_grads(lambda *a: lstm_gates(*a, backend=backend), gates, c_prev, weights,
                                    grad_h, grad_c)
    outputs_ref, grads_ref = reference_in_float64(gates, c_prev, weights, grad_h, grad_c)
    for actual, expected in zip(outputs + grads, outputs_ref + grads_ref):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate_dtype, state_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                                     (torch.float32, torch.float64), (torch.float16, torch.bfloat16)],
                         ids=["bf16-gates-f32-state", "f16-gates-f32-state", "f32-gates-f64-state",
                              "f16-gates-bf16-state"])
@pytest.mark.parametrize("device, backend", device_backend_cases())
def test_lstm_gates_mixed_dtypes_follow_promotion(device, backend, gate_dtype, state_dtype):
    """Dtype policy: outputs in promote_types(gates, c_prev), as eager PyTorch; gradients in each input's dtype."""
    gates, _, _ = make_inputs((2, 3, 7, 5), gate_dtype, device)
    _, c_prev, _ = make_inputs((2, 3, 7, 5), state_dtype, device)
    out_dtype = torch.promote_types(gate_dtype, state_dtype)
    grad_h, grad_c = (torch.randn(2, 3, 7, 5, dtype=out_dtype, device=device) for _ in range(2))
    (h_next, c_next), (grad_gates, grad_c_prev) = run_with_grads(
        lambda *a: lstm_gates(*a, backend=backend), gates, c_prev, [None] * 3, grad_h, grad_c)
    (h_ref, c_ref), (grad_gates_ref, grad_c_prev_ref) = reference_in_float64(gates, c_prev, [None] * 3, grad_h, grad_c)
    assert h_next.dtype == c_next.dtype == out_dtype
    assert grad_gates.dtype == gate_dtype and grad_c_prev.dtype == state_dtype
    # The fused kernels do the math in float32 (float64) from the stored values, so the outputs are as precise as
    # their dtype; eager torch runs the activations in the gates' dtype, so it is as precise as the coarsest input.
    coarsest = max(gate_dtype, state_dtype, key=lambda t: torch.finfo(t).eps)
    precision = out_dtype if backend in FUSED else coarsest
    assert_close(h_next, h_ref, precision, backend, "h_next")
    assert_close(c_next, c_ref, precision, backend, "c_next")
    assert_close(grad_gates, grad_gates_ref, gate_dtype, backend, "grad_gates")
    assert_close(grad_c_prev, grad_c_prev_ref, state_dtype if backend in FUSED else coarsest, backend, "grad_c_prev")


class RecordOps(TorchDispatchMode):
    """Records the arguments of every op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("gate_order", ["ifog", "ifgo"])
@pytest.mark.parametrize("path", ["eager", "custom_op"])
@pytest.mark.parametrize("used", ["h_only", "c_only"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_lstm_gates_one_output_unused(device, backend, used, path, gate_order, monkeypatch):
    """c_next unused at the last step (or h_next unused): the gradient is right, and the backward kernel is told
    the gradient is absent (None) rather than handed a tensor of zeros to read, on both paths of fused_op: the
    autograd.Function of eager calls and the custom ops torch.compile traces (whose autograd, register_autograd,
    also carries the gate order to the backward op and the w_co gradient)."""
    gates, c_prev, weights = make_inputs((2, 3, 7, 5), torch.float32, device, peephole=True)
    grad = torch.randn_like(c_prev)
    grad_h, grad_c = (grad, None) if used == "h_only" else (None, grad)
    run = fused_run(backend)
    if path == "eager":
        h_next, c_next = lstm_gates(gates, c_prev, *weights, backend=backend, gate_order=gate_order)
        handed = []
        backward_impl = run.backward_impl
        monkeypatch.setattr(run, "backward_impl", lambda *args: handed.append(args) or backward_impl(*args))
        grads = torch.autograd.grad(h_next if used == "h_only" else c_next, [gates, c_prev, *weights], grad)
    else:
        h_next, c_next = run.custom_op(*prepare(gates, c_prev, *weights, gate_order))
        with RecordOps() as recorder:
            grads = torch.autograd.grad(h_next if used == "h_only" else c_next, [gates, c_prev, *weights], grad)
        handed = [args for name, args in recorder.calls if name.startswith(f"convlstm.lstm_gates_{backend}_backward")]
    _, grads_ref = reference_in_float64(gates, c_prev, weights, grad_h, grad_c, gate_order)
    for actual, expected in zip(grads, grads_ref):
        torch.testing.assert_close(actual.double(), expected, atol=1e-5, rtol=1e-5)
    (args,) = handed
    op_grad_h, op_grad_c = args[5], args[6]
    assert (op_grad_h is None, op_grad_c is None) == (grad_h is None, grad_c is None)
    assert args[8] == {"ifog": 2, "ifgo": 3}[gate_order]  # o_slot


def make_cell(backend, peephole, dtype=torch.float32, device="cpu", input_dim=2, hidden_dim=3, seed=0):
    torch.manual_seed(seed)
    cell = ConvLSTMCell(input_dim, hidden_dim, 3, True, backend=backend, peephole=peephole)
    if peephole:  # non-zero, so the peephole terms matter
        for w in (cell.w_ci, cell.w_cf, cell.w_co):
            torch.nn.init.normal_(w)
    return cell.to(device, dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("device, backend", device_backend_cases())
def test_cell_gradcheck_float64(device, backend, peephole, layout):
    """torch.autograd.gradcheck through the whole ConvLSTMCell (conv + gates) in float64, odd sizes 5x3.
    Fast mode (a random projection of the Jacobian, still compared numerically against autograd): the full
    Jacobian of ~380 inputs took 16 s per case on 2 cores; test_lstm_gates_gradcheck_full checks the op's full
    Jacobian."""
    cell = make_cell(backend, peephole, torch.float64, device, input_dim=1, hidden_dim=2)
    generator = torch.Generator().manual_seed(1)
    x, h, c = (torch.randn(2, n, 5, 3, generator=generator, dtype=torch.float64).to(device) for n in (1, 2, 2))
    if layout == "channels_last":
        cell = cell.to(memory_format=torch.channels_last)
        x, h, c = (t.contiguous(memory_format=torch.channels_last) for t in (x, h, c))
    params = list(cell.parameters())
    names = [name for name, _ in cell.named_parameters()]

    def step(x, h, c, *param_values):
        values = dict(zip(names, param_values))
        h_next, c_next = torch.func.functional_call(cell, values, (x, (h, c)))
        return h_next, c_next

    inputs = [t.detach().requires_grad_() for t in (x, h, c, *params)]
    with exact_cudnn():
        assert torch.autograd.gradcheck(step, inputs, fast_mode=True)
    if layout == "channels_last":  # the gates keep the layout the convolution gives them: channels_last on the CPU;
        # cuDNN's float64 convolutions answer NCHW to channels_last inputs (seen on an H100, torch 2.11)
        gates = torch.nn.functional.conv2d(torch.cat([x, h], 1), cell.conv.weight, padding=cell.conv.padding)
        gates_nhwc = gates.is_contiguous(memory_format=torch.channels_last) and not gates.is_contiguous()
        assert gates_nhwc or device == "cuda"
        h_next = step(*inputs)[0]
        assert h_next.is_contiguous(memory_format=torch.channels_last) == gates_nhwc


@pytest.mark.parametrize("layout, gate_order", [("contiguous", "ifog"), ("channels_last", "ifog"),
                                                ("channels_last", "ifgo")],
                         ids=["contiguous", "channels_last", "channels_last-ifgo"])
@pytest.mark.parametrize("device, backend", device_backend_cases())
def test_lstm_gates_gradcheck_full(device, backend, layout, gate_order):
    """Full-Jacobian float64 gradcheck of the op itself (gates, c_prev and the peephole weights), odd sizes 3x5."""
    gates, c_prev, weights = make_inputs((1, 2, 3, 5), torch.float64, device, peephole=True)
    if layout == "channels_last":
        gates, c_prev = (t.contiguous(memory_format=torch.channels_last) for t in (gates, c_prev))
    inputs = [t.detach().requires_grad_() for t in (gates, c_prev, *weights)]
    assert torch.autograd.gradcheck(lambda *args: lstm_gates(*args, backend=backend, gate_order=gate_order), inputs)


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_cell_autocast_bf16(device, backend, peephole):
    """Under autocast the conv gives bf16 gates; with the float32 state of init_hidden, h and c stay float32 (the
    dtype policy), as on the eager torch path. Loss and gradients agree with the torch path under autocast."""
    results = {}
    for name in ("torch", backend):
        cell = make_cell(name, peephole, device=device)
        x = torch.randn(2, 2, 7, 5, generator=torch.Generator().manual_seed(2)).to(device)
        h, c = cell.init_hidden(2, (7, 5))
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            h1, c1 = cell(x, (h, c))
            h2, c2 = cell(x, (h1, c1))
        assert h1.dtype == c1.dtype == h2.dtype == c2.dtype == torch.float32
        loss = (h2 ** 2).sum() + c2.sum()
        loss.backward()
        results[name] = (loss.detach(), {n: p.grad for n, p in cell.named_parameters()})
    (loss_ref, grads_ref), (loss, grads) = results["torch"], results[backend]
    # The torch path's sigmoid/tanh run in bf16, the fused ones in fp32: differences are bf16 rounding.
    torch.testing.assert_close(loss, loss_ref, atol=0.05, rtol=0.02)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=0.1, rtol=0.05, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_encoder_decoder_sequence_matches_torch(device, backend, dtype):
    """EncoderDecoderConvLSTM over 20 steps (10 in, 10 out): same loss and parameter gradients as the torch path."""
    results = {}
    for name in ("torch", backend):
        torch.manual_seed(0)
        model = EncoderDecoderConvLSTM(nf=3, in_chan=1, backend=name, peephole=True).to(device, dtype)
        for module in (model.encoder_1_convlstm, model.encoder_2_convlstm, model.decoder_1_convlstm,
                       model.decoder_2_convlstm):
            for w in (module.w_ci, module.w_cf, module.w_co):
                torch.nn.init.normal_(w, std=0.5)
        generator = torch.Generator().manual_seed(3)
        x = torch.rand(2, 10, 1, 6, 5, generator=generator, dtype=dtype).to(device)
        target = torch.rand(2, 1, 10, 6, 5, generator=generator, dtype=dtype).to(device)
        prediction = model(x, future_seq=10)
        loss = torch.nn.functional.mse_loss(prediction, target)
        loss.backward()
        results[name] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    atol, rtol = (1e-12, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    (loss_ref, grads_ref), (loss, grads) = results["torch"], results[backend]
    torch.testing.assert_close(loss, loss_ref, atol=atol, rtol=rtol)
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED, devices=["cuda"]))
def test_ddp_step_over_nccl(device, backend, monkeypatch):
    """A DistributedDataParallel training step over NCCL (one process, as `torchrun --nproc_per_node=1` gives) with
    the fused op: the step's loss and gradients are those of the same model without DDP on the torch backend."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    single_process_group(monkeypatch)
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 4, 1, 8, 8, generator=generator).to(device)
    target = torch.rand(2, 1, 4, 8, 8, generator=generator).to(device)
    results = {}
    dist.init_process_group("nccl", device_id=torch.device(device, 0))
    try:
        for name in ("torch", backend):
            torch.manual_seed(0)
            model = EncoderDecoderConvLSTM(nf=4, in_chan=1, backend=name).to(device)
            if name == backend:
                model = DistributedDataParallel(model, device_ids=[0])
            loss = torch.nn.functional.mse_loss(model(x, future_seq=4), target)
            loss.backward()  # DDP's all-reduce of the gradients runs here
            results[name] = loss.detach(), {n.removeprefix("module."): p.grad for n, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()
    (loss_ref, grads_ref), (loss, grads) = results["torch"], results[backend]
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-4)
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("device, backend", device_backend_cases())
def test_cell_torch_compile_fullgraph(device, backend, peephole):
    """torch.compile of the cell with fullgraph=True (a graph break would raise) gives the eager results."""
    if device == "cpu" and backend == "triton":
        pytest.skip("torch.compile of a triton_op needs a GPU: on CPU tensors Inductor cannot run the interpreter "
                    "('Cannot access data pointer of Tensor'); the GPU run of this test covers it")
    torch._dynamo.reset()
    cell = make_cell(backend, peephole, device=device)
    generator = torch.Generator().manual_seed(4)
    x, h, c = (torch.randn(2, n, 7, 5, generator=generator).to(device) for n in (2, 3, 3))
    results = []
    for run in (cell, torch.compile(cell, fullgraph=True)):
        cell.zero_grad()
        h_next, c_next = run(x, (h, c))
        ((h_next ** 2).sum() + c_next.sum()).backward()
        results.append((h_next.detach(), c_next.detach(), [p.grad.clone() for p in cell.parameters()]))
    (h_eager, c_eager, grads_eager), (h_compiled, c_compiled, grads_compiled) = results
    torch.testing.assert_close(h_compiled, h_eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_compiled, c_eager, atol=1e-5, rtol=1e-5)
    for grad_compiled, grad_eager in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(grad_compiled, grad_eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_lstm_gates_ifgo_torch_compile_fullgraph(device, backend):
    """A backend's gate function (what a cell binds) called with gate_order="ifgo" under torch.compile with
    fullgraph=True: the custom ops take the order as an argument, without a graph break, and give the eager
    results, outputs and gradients."""
    if device == "cpu" and backend == "triton":
        pytest.skip("torch.compile of a triton_op needs a GPU (see test_cell_torch_compile_fullgraph)")
    torch._dynamo.reset()
    _, gates_fn = resolve(backend, device)
    step = functools.partial(gates_fn, gate_order="ifgo")
    gates, c_prev, weights = make_inputs((2, 3, 7, 5), torch.float32, device, peephole=True)
    grad_h, grad_c = torch.randn_like(c_prev), torch.randn_like(c_prev)
    eager = run_with_grads(step, gates, c_prev, weights, grad_h, grad_c)
    compiled = run_with_grads(torch.compile(step, fullgraph=True), gates, c_prev, weights, grad_h, grad_c)
    for actual, expected in zip([*compiled[0], *compiled[1]], [*eager[0], *eager[1]]):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def unavailable_reasons(device):
    """Why each backend the suite runs on `device` does not run there (None: it does), for failure messages."""
    return {name: unavailable_reason(name, torch.device(device)) for name in DEVICE_BACKENDS[device]}


def test_available_backends_on_cpu():
    """The CPU runs exactly the backends helpers.py expects: torch, triton when the interpreter is on (conftest.py
    turns it on without a GPU) and the twin; "auto" stays torch."""
    from convlstm.ops.lstm_gates.triton_kernels import INTERPRETED
    assert available_backends("cpu") == EXPECTED_BACKENDS["cpu"], unavailable_reasons("cpu")
    assert INTERPRETED == TRITON_INTERPRET
    assert TRITON_INTERPRET or CUDA, "without a GPU conftest.py turns Triton's interpreter on"
    gates, c_prev, _ = make_inputs((2, 3, 7, 5), torch.float32, "cpu")
    torch.testing.assert_close(lstm_gates(gates, c_prev), lstm_gates_ref(gates, c_prev), atol=0, rtol=0)


@gpu_test
def test_available_backends_on_cuda_prefer_cuda_extension():
    assert available_backends("cuda") == EXPECTED_BACKENDS["cuda"] == ["cuda", "triton", "torch"], \
        unavailable_reasons("cuda")


def test_triton_without_interpreter_is_unavailable_on_cpu():
    """Without TRITON_INTERPRET, "triton" on CPU tensors is an error with the reason, not a fallback."""
    import subprocess
    import sys
    code = (
        "import torch, convlstm\n"
        "print(convlstm.available_backends('cpu'))\n"
        "g, c = torch.zeros(1, 4, 2, 2), torch.zeros(1, 1, 2, 2)\n"
        "try:\n"
        "    convlstm.lstm_gates(g, c, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print('error:', e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['torch', 'cpu_twin']"
    assert lines[1].startswith("error: backend 'triton' is not available for device cpu")
    assert "TRITON_INTERPRET=1" in lines[1]


@pytest.mark.parametrize("backend", ["fast", "Triton", ""])
def test_unknown_backend_is_an_error(backend):
    gates, c_prev, _ = make_inputs((2, 3, 7, 5), torch.float32, "cpu")
    with pytest.raises(ValueError, match=f"unknown backend '{backend}'"):
        lstm_gates(gates, c_prev, backend=backend)
    with pytest.raises(ValueError, match=f"unknown backend '{backend}'"):
        ConvLSTMCell(2, 3, 3, True, backend=backend)


def test_unavailable_backend_is_an_error_not_a_fallback():
    gates, c_prev, _ = make_inputs((2, 3, 7, 5), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available for device cpu: the cuda backend runs "
                                           "on CUDA tensors only"):
        lstm_gates(gates, c_prev, backend="cuda")
    cell = ConvLSTMCell(2, 3, 3, True, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        cell(torch.zeros(1, 2, 4, 4), cell.init_hidden(1, (4, 4)))


@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED + ("torch",)))
def test_bad_inputs_are_clear_errors(device, backend):
    gates, c_prev, weights = make_inputs((2, 3, 7, 5), torch.float32, device, peephole=True)
    call = lambda *args, **kwargs: lstm_gates(*args, backend=backend, **kwargs)  # noqa: E731
    with pytest.raises(ValueError, match=r"expected gates \(B, 4C, H, W\) and c_prev \(B, C, H, W\), got "
                                         r"\(2, 12, 7, 5\) and \(2, 4, 7, 5\)"):
        call(gates, torch.zeros(2, 4, 7, 5, device=device))
    with pytest.raises(ValueError, match=r"got \(2, 12, 7, 5\) and \(2, 3, 5, 7\)"):
        call(gates, torch.zeros(2, 3, 5, 7, device=device))
    with pytest.raises(ValueError, match="give all three peephole weights"):
        call(gates, c_prev, weights[0], weights[1], None)
    with pytest.raises(ValueError, match=r"w_cf must have shape \(C, 1, 1\) = \(3, 1, 1\), got \(3,\)"):
        call(gates, c_prev, weights[0], weights[1].reshape(3), weights[2])
    with pytest.raises(TypeError, match="c_prev has dtype torch.int64"):
        call(gates, torch.zeros(2, 3, 7, 5, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="c_prev is on meta but gates is on"):
        call(gates, torch.zeros(2, 3, 7, 5, device="meta"))
    for gate_order in ("iofg", "IFOG", ""):
        message = f"unknown gate_order '{gate_order}': expected one of 'ifog', 'ifgo'"
        with pytest.raises(ValueError, match=message):
            call(gates, c_prev, *weights, gate_order=gate_order)
        with pytest.raises(ValueError, match=message):  # what a cell binds, called directly
            resolve(backend, device)[1](gates, c_prev, gate_order=gate_order)
        with pytest.raises(ValueError, match=message):
            lstm_gates_ref(gates, c_prev, gate_order=gate_order)


def cpu_twin_extension():
    """The raw CPU twin extension, built on first use: expected on every machine (helpers.py), so a failed build
    fails the test."""
    from convlstm.ops.lstm_gates.cpu_twin import extension
    return extension()


def test_cpu_twin_binding_checks_its_arguments():
    """The C++ checks shared with the CUDA binding (lstm_gates_torch.h) reject misuse of the raw extension."""
    ext = cpu_twin_extension()
    gates, c_prev = torch.randn(2, 12, 7, 5), torch.randn(2, 3, 7, 5)
    with pytest.raises(RuntimeError, match="must be channels_last-contiguous"):
        ext.forward(gates, c_prev, None, None, None, True, 2)
    with pytest.raises(RuntimeError, match="unsupported dtype pair gates Float, c_prev Half"):
        ext.forward(gates, c_prev.half(), None, None, None, False, 2)
    with pytest.raises(RuntimeError, match="peephole weights must be contiguous \\(C,\\) Float"):
        ext.forward(gates, c_prev, *[torch.zeros(3, 1, 1)] * 3, False, 2)
    for o_slot in (0, 4):
        with pytest.raises(RuntimeError, match=f"o_slot must be 2 \\(gates i, f, o, g\\) or 3 \\(i, f, g, o\\), "
                                               f"got {o_slot}"):
            ext.backward(gates, c_prev, None, None, None, c_prev, None, False, o_slot)
    # An absent output gradient (None) means the same as a zero one.
    grad = torch.randn_like(c_prev)
    with_none = ext.backward(gates, c_prev, None, None, None, grad, None, False, 2)
    with_zeros = ext.backward(gates, c_prev, None, None, None, grad, torch.zeros_like(c_prev), False, 2)
    for a, b in zip(with_none, with_zeros):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("gate_order", ["ifog", "ifgo"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_twin_covers_every_element_on_any_grid(layout, gate_order):
    """The CUDA kernels' thread bodies, walked by the twin over the launcher's grid (9 blocks of 256 threads x 4
    elements for these 8820 elements, the last block partly idle), over smaller grids, where each thread strides
    over the elements as on the GPU for inputs of more than 2^28 elements, over a larger one (idle blocks), and
    with int64 indices (on the GPU: c_prev of more than 4.7e8 elements): the same outputs and gradients, bit for
    bit, and the reference's."""
    ext = cpu_twin_extension()
    gates, c_prev, weights = make_inputs((3, 7, 20, 21), torch.float32, "cpu", layout, peephole=True)
    args = prepare(gates.detach(), c_prev.detach(), *(w.detach() for w in weights), gate_order)
    grad_h, grad_c = torch.randn_like(args[1]), torch.randn_like(args[1])
    forward = ext.forward(*args)
    backward = ext.backward(*args[:5], grad_h, grad_c, *args[5:])  # ..., channels_last, o_slot
    (h_ref, c_ref), grads_ref = reference_in_float64(gates, c_prev, weights, grad_h, grad_c, gate_order)
    for actual, expected, name in zip([*forward, *backward], [h_ref, c_ref, *grads_ref[:2]],
                                      ["h_next", "c_next", "grad_gates", "grad_c_prev"]):
        assert_close(actual, expected, torch.float32, "cpu_twin", name)
    for grid, int64_index in ((1, False), (2, False), (3, True), (8, False), (10, False), (0, True)):
        knobs = dict(grid=grid, int64_index=int64_index)
        on_grid = [*ext.forward(*args, **knobs), *ext.backward(*args[:5], grad_h, grad_c, *args[5:], **knobs)]
        for actual, expected in zip(on_grid, [*forward, *backward]):
            torch.testing.assert_close(actual, expected, atol=0, rtol=0, msg=lambda m: f"{knobs}: {m}")
    with pytest.raises(RuntimeError, match="grid must be 0 \\(the CUDA launcher's\\) or 1..262144 blocks, got -1"):
        ext.forward(*args, grid=-1)


@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED, devices=["cuda"]))
def test_lstm_gates_int64_offsets(device, backend):
    """One sample whose gates pass 2^31 elements (B=1, C=44, 4100x4100: 5.9 GB in bf16) while C*H*W does not: gate
    o and g of the last channels sit past int32 offsets, and 3*C*H*W wraps in 32 bits (the Triton kernels' fault,
    test_triton_gate_offsets_do_not_wrap_at_2_31 on the CPU)."""
    b, c, h, w = 1, 44, 4100, 4100
    generator = torch.Generator(device=device).manual_seed(5)
    gates = torch.randn(b, 4 * c, h, w, device=device, dtype=torch.bfloat16, generator=generator)
    c_prev = torch.randn(b, c, h, w, device=device, dtype=torch.bfloat16, generator=generator)
    assert c * h * w < 2**31 <= 3 * c * h * w and gates.numel() > 2**31
    gates.requires_grad_()
    h_next, c_next = lstm_gates(gates, c_prev, backend=backend)
    grad_gates, = torch.autograd.grad(h_next, gates, torch.ones_like(h_next))
    channels, rows = slice(c - 4, c), slice(-2, None)  # the last channels' last two rows: the largest offsets
    small = gates.detach().view(b, 4, c, h, w)[:, :, channels, rows].reshape(b, 16, 2, w).float().requires_grad_()
    h_ref, c_ref = lstm_gates_ref(small, c_prev[:, channels, rows].float())
    grad_ref, = torch.autograd.grad(h_ref, small, torch.ones_like(h_ref))
    torch.testing.assert_close(h_next[:, channels, rows].float(), h_ref, atol=1e-3, rtol=1.6e-2)
    torch.testing.assert_close(c_next[:, channels, rows].float(), c_ref, atol=1e-3, rtol=1.6e-2)
    grad_tail = grad_gates.view(b, 4, c, h, w)[:, :, channels, rows].reshape(b, 16, 2, w)
    torch.testing.assert_close(grad_tail.float(), grad_ref, atol=1e-3, rtol=1.6e-2)


@pytest.mark.parametrize("shape, channels_last, rows, row_len, tile", [
    ((12, 64, 64, 64), False, 12 * 64, 4096, (1, 1024)),  # the tutorial's step: one row is 4 programs
    ((12, 64, 64, 64), True, 12 * 4096, 64, (16, 64)),  # 16 positions of 64 channels
    ((2, 5, 11, 13), False, 10, 143, (4, 256)),  # odd rows: masked columns
    ((2, 5, 11, 13), True, 286, 5, (128, 8)),
], ids=["tutorial-nchw", "tutorial-nhwc", "odd-nchw", "odd-nhwc"])
def test_triton_tiles_rows(shape, channels_last, rows, row_len, tile):
    """The Triton kernels' tiling (convlstm/ops/lstm_gates/triton_launcher.py): rows of H*W (NCHW) or of C
    (channels_last), BLOCK elements per program; a row too long for the grid is a clear error, not a wrong launch."""
    from convlstm.ops.lstm_gates import triton_launcher
    grid, sizes = triton_launcher._tiling(torch.empty(shape, device="meta"), channels_last)
    assert (sizes["rows"], sizes["row_len"], sizes["channels"]) == (rows, row_len, shape[1])
    assert (sizes["ROWS"], sizes["COLS"]) == tile and sizes["ROWS"] * sizes["COLS"] == triton_launcher.BLOCK
    assert grid == (-(-rows // tile[0]), -(-row_len // tile[1]))
    with pytest.raises(ValueError, match="rows of 68719476736 elements"):
        triton_launcher._tiling(torch.empty(1, 1, 2**18, 2**18, device="meta"), False)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_lstm_gates_without_autograd(device, backend, mode):
    """Validation (torch.no_grad) and evaluate.py (torch.inference_mode) run the fused path without autograd: the
    reference's outputs, nothing kept for a backward."""
    gates, c_prev, weights = make_inputs((2, 3, 7, 5), torch.float32, device, peephole=True)
    with mode():
        h_next, c_next = lstm_gates(gates, c_prev, *weights, backend=backend)
    (h_ref, c_ref), _ = reference_in_float64(gates, c_prev, weights, torch.ones_like(c_prev), None)
    assert not h_next.requires_grad and not c_next.requires_grad and h_next.grad_fn is None
    assert_close(h_next, h_ref, torch.float32, backend, "h_next")
    assert_close(c_next, c_ref, torch.float32, backend, "c_next")


@triton.jit
def gate_offsets_kernel(out_ptr, rows, row_len, channels, CHANNELS_LAST: tl.constexpr, ROWS: tl.constexpr,
                        COLS: tl.constexpr):
    """The offsets of the four gates of program (0, 0)'s tile, as the Triton kernels form them, into out (4, ROWS,
    COLS) int64."""
    n, mask, channel, gate_base, gate_stride = _tile(rows, row_len, channels, CHANNELS_LAST, ROWS, COLS)
    tile = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    for k in tl.static_range(4):
        tl.store(out_ptr + k * ROWS * COLS + tile, gate_base + k * gate_stride)


@pytest.mark.skipif(not TRITON_INTERPRET, reason="the interpreter keeps i32 arithmetic on CPU tensors; on a GPU "
                    "test_lstm_gates_int64_offsets runs the kernels at this size")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_triton_gate_offsets_do_not_wrap_at_2_31(channels_last):
    """The Triton kernels' offsets of all four gates (triton_kernels._tile) at B=1, C=44, 4100x4100, where C*H*W fits
    in 32 bits but 3*C*H*W does not: Triton passes such sizes as i32, and the interpreter wraps i32 products as a
    GPU does, so offsets are computed here without allocating the 6 GB tensor. Before the fix, NCHW's gate o and g
    offsets wrapped negative."""
    c, h, w = 44, 4100, 4100
    rows, row_len = (h * w, c) if channels_last else (c, h * w)
    tile_rows, cols = 64, 64
    got = torch.empty(4, tile_rows, cols, dtype=torch.int64)
    gate_offsets_kernel[(1, 1)](got, rows, row_len, c, CHANNELS_LAST=channels_last, ROWS=tile_rows, COLS=cols)
    r = torch.arange(tile_rows, dtype=torch.int64)[:, None]
    col = torch.arange(cols, dtype=torch.int64)[None, :]
    if channels_last:  # position r's 4C gates in a row
        want = [r * 4 * c + k * c + col for k in range(4)]
    else:  # gates plane k*C + r of sample 0
        want = [(k * c + r) * row_len + col for k in range(4)]
    valid = (r < rows) & (col < row_len)
    for k in range(4):
        torch.testing.assert_close(got[k][valid], want[k].expand_as(got[k])[valid], atol=0, rtol=0,
                                   msg=lambda m: f"gate block {k}: {m}")
