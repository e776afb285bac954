"""Bytes each backend keeps for backward per ConvLSTM step, counted with saved_tensors_hooks (convlstm/ops/README.md).

A tensor saved twice, or saved as a view of another, is counted once (by storage), as it is held once.
Per element of the state (B, C, H, W), one lstm_gates call keeps:
  eager torch: i, f, o, g, tanh(c_next), c_prev                         6 tensors (24 B in fp32)
               + w*c_prev terms: c_next and the weights with peephole    7 tensors (28 B in fp32)
  fused:       gates (4C) and c_prev                                     5 tensors (20 B in fp32)
               + c_next with peephole (for the w_co gradient)            6 tensors (24 B in fp32)
The last tests count a whole EncoderDecoderConvLSTM forward (kept bytes) and forward+backward (peak), where conv_cat
and conv_frame also keep less. Both counts are convlstm/memory.py's, which bench_memory reports.
"""
import pytest
import torch

import convlstm.cell
import convlstm.models.tutorial
import convlstm.ops.conv_cat
from convlstm.memory import peak_mem_mb, saved_bytes
from convlstm import ConvLSTMCell, EncoderDecoderConvLSTM, lstm_gates
from helpers import FUSED, device_backend_cases


B, C, H, W = 2, 3, 7, 5
N = B * C * H * W  # elements of the state


# (gates dtype, state dtype) -> bytes per state element, eager torch and fused, without / with peephole.
# The peephole weights add 3*C*4 bytes (three (C, 1, 1) float32 tensors) on both paths.
EXPECTED = {
    (torch.float32, torch.float32): dict(torch=(24, 28), fused=(20, 24)),
    (torch.bfloat16, torch.float32): dict(torch=(16, 26), fused=(12, 16)),  # autocast with float32 state
    (torch.bfloat16, torch.bfloat16): dict(torch=(12, 24), fused=(10, 12)),
}


@pytest.mark.parametrize("gate_order", ["ifog", "ifgo"])
@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("dtypes", list(EXPECTED), ids=["f32", "bf16-gates-f32-state", "bf16"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_lstm_gates_saved_bytes_per_call(device, backend, dtypes, peephole, gate_order):
    """The bytes kept do not depend on the gate order."""
    gate_dtype, state_dtype = dtypes
    gates = torch.randn(B, 4 * C, H, W, dtype=gate_dtype, device=device, requires_grad=True)
    c_prev = torch.randn(B, C, H, W, dtype=state_dtype, device=device, requires_grad=True)
    weights = [torch.randn(C, 1, 1, device=device, requires_grad=True) for _ in range(3)] if peephole else [None] * 3
    weight_bytes = 3 * C * 4 if peephole else 0

    eager = saved_bytes(lambda: lstm_gates(gates, c_prev, *weights, backend="torch", gate_order=gate_order))
    fused = saved_bytes(lambda: lstm_gates(gates, c_prev, *weights, backend=backend, gate_order=gate_order))

    assert eager == EXPECTED[dtypes]["torch"][peephole] * N + weight_bytes
    assert fused == EXPECTED[dtypes]["fused"][peephole] * N + weight_bytes
    assert fused < eager


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_cell_sequence_saved_bytes_per_step(device, backend, peephole):
    """Over a sequence, c is shared between steps (c_next of one is c_prev of the next), so a step adds i, f, o, g,
    tanh(c_next) on the eager path and only gates (4C) on the fused one: one float32 state-sized tensor less per
    step. The conv's saved input and weight are the same on both paths."""
    steps = 4

    def run(name):
        torch.manual_seed(0)
        cell = ConvLSTMCell(2, C, 3, True, backend=name, peephole=peephole).to(device)
        x = torch.randn(B, steps, 2, H, W, device=device)
        h, c = cell.init_hidden(B, (H, W))

        def sequence():
            state = (h, c)
            for t in range(steps):
                state = cell(x[:, t], state)

        return saved_bytes(sequence)

    eager, fused = run("torch"), run(backend)
    assert eager - fused == 4 * N * steps


def model_saved_bytes(backend, device, amp):
    """Bytes autograd keeps over one forward of a small EncoderDecoderConvLSTM (3 frames in, 3 out, nf 16, 8x8),
    parameters left out: they are held anyway (the eager path under autocast keeps bf16 copies of them instead)."""
    torch.manual_seed(0)
    model = EncoderDecoderConvLSTM(nf=16, in_chan=1, backend=backend).to(device)
    x = torch.rand(2, 3, 1, 8, 8, device=device)

    def forward():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            model(x, future_seq=3)

    return saved_bytes(forward, held=list(model.parameters()))


# Fused backends' share of what eager keeps for the whole model, at most. Measured with the cpu_twin: 0.792 and 0.581;
# 0.813 and 0.594 with the reference head (conv_stack_ref); 0.875 and 0.842 when the fused cells also kept the
# concatenation as the eager ones do (conv_cat_ref).
MODEL_SHARE = {"none": 0.81, "bf16": 0.61}


@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
@pytest.mark.parametrize("device, backend", device_backend_cases(FUSED))
def test_encoder_decoder_saved_bytes(device, backend, amp, monkeypatch):
    """The fused cells keep gates and c_prev (above) and, through conv_cat, each hidden state once in the dtype the
    convolution reads, where the eager cells keep a concatenation per convolution (h feeds two) and, under
    autocast, bf16 copies of the weights; the head (conv_frame) keeps no second copy of the decoder's frames."""
    eager = model_saved_bytes("torch", device, amp)
    fused = model_saved_bytes(backend, device, amp)
    monkeypatch.setattr(convlstm.models.tutorial, "conv_frame_applies", lambda conv, inputs: False)  # the tutorial's head
    fused_stacking = model_saved_bytes(backend, device, amp)
    monkeypatch.setattr(convlstm.cell, "conv_cat", convlstm.ops.conv_cat.conv_cat_ref)
    fused_concatenating = model_saved_bytes(backend, device, amp)
    assert fused < fused_stacking < fused_concatenating < eager
    assert fused <= MODEL_SHARE[amp] * eager, f"{fused / eager:.3f} of eager"


def model_step_peak_mb(backend, amp):
    """Peak MiB allocated over a forward and backward of EncoderDecoderConvLSTM (nf 16, 16x16, B 2, 4 in, 4 out) on
    the CPU, as bench_memory measures a training step's. Call it on one thread (fixture one_cpu_thread): oneDNN's
    per-thread convolution buffers grow with the thread count and are a large part of so small a step (bf16 with 16
    threads: 0.852 of eager)."""
    torch.manual_seed(0)
    model = EncoderDecoderConvLSTM(nf=16, in_chan=1, backend=backend)
    x = torch.rand(2, 4, 1, 16, 16)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            prediction = model(x, future_seq=4)
        prediction.float().mean().backward()

    step()  # the gradients exist before the measured step, as in training
    return peak_mem_mb(step, "cpu")


# Measured with the cpu_twin, one thread: 0.733 (none) and 0.732 (bf16) of eager; 0.789 and 0.808 with the
# tutorial's head.
MODEL_PEAK_SHARE = 0.76


@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
@pytest.mark.parametrize("device, backend", device_backend_cases(["cpu_twin"], devices=["cpu"]))
def test_encoder_decoder_step_peak(device, backend, amp, monkeypatch, one_cpu_thread):
    """With fused cells the head runs per frame (conv_frame): no list of float32 frames, no stack and no gradient
    of all frames at once, so a step's peak falls below what the tutorial's head gives the same cells. CPU only: the
    share of a GPU's peak is bench_memory's to measure (its allocator rounds blocks, cuDNN adds workspaces)."""
    eager = model_step_peak_mb("torch", amp)
    fused = model_step_peak_mb(backend, amp)
    monkeypatch.setattr(convlstm.models.tutorial, "conv_frame_applies", lambda conv, inputs: False)  # the tutorial's head
    fused_stacking = model_step_peak_mb(backend, amp)
    assert fused < fused_stacking < eager
    assert fused <= MODEL_PEAK_SHARE * eager, f"{fused / eager:.3f} of eager"
