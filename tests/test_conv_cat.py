"""conv_cat against conv_cat_ref and conv_stack against conv_stack_ref: the same outputs and gradients, less kept
for backward (convlstm/conv_cat.py, convlstm/conv_stack.py).

As in the model, h feeds two convolutions (its cell's next step and the cell above), x one. On the CPU results are
compared bit for bit; on a GPU cuDNN may pick another algorithm (or one with atomics) for the same call, so within
a tolerance.
"""
import pytest
import torch
from torch import nn

from convlstm.conv_cat import conv_cat, conv_cat_ref
from convlstm.conv_stack import conv_stack, conv_stack_ref
from test_lstm_gates_memory import saved_bytes

CX, CH, COUT = 5, 8, 32


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="no CUDA device on this machine"))]


def make(layout, device="cpu", seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(CX + CH, COUT, 3, padding=1).to(device)
    x = torch.randn(2, CX, 9, 7, device=device)
    h = torch.randn(2, CH, 9, 7, device=device)
    if layout == "channels_last":
        conv = conv.to(memory_format=torch.channels_last)
        x, h = (t.contiguous(memory_format=torch.channels_last) for t in (x, h))
    return conv, x.requires_grad_(), h.requires_grad_()


def two_steps(fn, conv, x, h, amp):
    """The model's pattern: conv over (x, h), then over (h, h[:, :CX]) as the cell above would see h."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        return fn(x, h, conv) + fn(h[:, :CX] * 2, h, conv)


def run(fn, conv, x, h, amp):
    conv.zero_grad(set_to_none=True)
    x.grad = h.grad = None
    out = two_steps(fn, conv, x, h, amp)
    out.float().square().sum().backward()
    return out.detach(), x.grad, h.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_conv_cat_matches_reference(device, amp, layout):
    """Outputs and input gradients bit for bit. Weight and bias gradients too in float32; under autocast the
    reference sums each call's bf16 weight gradient in bf16 (through autocast's cached bf16 weight) and conv_cat
    in float32: it equals the float32 sum of the calls' gradients taken one at a time."""
    conv, x, h = make(layout, device)
    expected = run(conv_cat_ref, conv, x, h, amp)
    actual = run(conv_cat, conv, x, h, amp)
    exact = dict(atol=0, rtol=0) if device == "cpu" else dict(atol=1e-3, rtol=2e-2)  # cuDNN: TF32, atomics
    for name, a, e in zip(["output", "grad_x", "grad_h", "grad_weight", "grad_bias"], actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape and a.stride() == e.stride(), name
        if amp == "bf16" and name in ("grad_weight", "grad_bias"):
            torch.testing.assert_close(a, e, atol=1e-3, rtol=2e-2, msg=name)
        else:
            torch.testing.assert_close(a, e, **exact, msg=name)
    assert expected[0].dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
    if amp == "bf16":  # each call alone: no accumulation, so the reference's gradient is that call's own
        per_call = []
        for inputs in ((x, h), (h[:, :CX] * 2, h)):
            conv.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16):
                out = conv_cat_ref(*(t.detach() for t in inputs), conv)
            # the same output gradient as in the sum: 2 * (sum of both calls)
            (out.float() * (2 * expected[0].float())).sum().backward()
            per_call.append((conv.weight.grad, conv.bias.grad))
        torch.testing.assert_close(actual[3], per_call[0][0] + per_call[1][0], **exact)
        torch.testing.assert_close(actual[4], per_call[0][1] + per_call[1][1], **exact)


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_conv_cat_keeps_h_once(amp):
    """The reference keeps each call's concatenation (under autocast in bf16, plus the bf16 weight); conv_cat keeps
    x, h and the second call's x once each, in the dtype the convolution reads, and the float32 weight (a
    parameter: no new memory)."""
    conv, x, h = make("contiguous")
    size = 2 * 9 * 7  # elements per channel
    reads = 2 if amp == "bf16" else 4  # bytes per element the convolution reads
    weight = conv.weight.numel()
    reference = saved_bytes(lambda: two_steps(conv_cat_ref, conv, x, h, amp))
    kept = saved_bytes(lambda: two_steps(conv_cat, conv, x, h, amp))
    assert reference == 2 * (CX + CH) * size * reads + (weight * 2 if amp == "bf16" else weight * 4)
    # x, h and the second call's x (h[:, :CX] * 2, a new tensor), each once; then the float32 weight
    assert kept == (CX + CH + CX) * size * reads + weight * 4
    # what the concatenations cost beyond that: the second copy of h
    assert reference - kept == CH * size * reads + (weight * 2 - weight * 4 if amp == "bf16" else 0)


def test_conv_cat_without_autograd_is_the_reference():
    """no_grad (validation, evaluate.py) and inputs needing no gradient record nothing: the reference runs."""
    conv, x, h = make("contiguous")
    with torch.no_grad():
        out = conv_cat(x, h, conv)
        torch.testing.assert_close(out, conv_cat_ref(x, h, conv), atol=0, rtol=0)
    assert out.grad_fn is None
    conv.requires_grad_(False)
    out = conv_cat(x.detach(), h.detach(), conv)
    assert out.grad_fn is None


def test_conv_cat_sees_in_place_changes():
    """A tensor changed in place after its autocast copy was made gets a fresh copy, not the stale one."""
    conv, x, h = make("contiguous")
    h = h.detach().clone().requires_grad_()
    base = h * 1  # a non-leaf that can change in place
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = conv_cat(x, base, conv)
        base.mul_(3)
        second = conv_cat(x, base, conv)
        expected = conv_cat_ref(x, base, conv)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, expected, atol=0, rtol=0)


# ---- conv_stack: the model's Conv3d head over the decoder's frames (convlstm/conv_stack.py) ---------------------

def make_frames(device, count=4, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv3d(CH, 1, (1, 3, 3), padding=(0, 1, 1)).to(device)
    leaves = [torch.randn(2, CH, 9, 7, device=device, requires_grad=True) for _ in range(count)]
    return conv, leaves


def run_head(fn, conv, leaves, amp):
    conv.zero_grad(set_to_none=True)
    for leaf in leaves:
        leaf.grad = None
    frames = [leaf * 1 for leaf in leaves]  # non-leaf frames, as the decoder's outputs are
    with torch.autocast(leaves[0].device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        out = torch.sigmoid(fn(frames, conv))
    out.float().square().sum().backward()
    return [out.detach(), *(leaf.grad for leaf in leaves), conv.weight.grad, conv.bias.grad]


@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_conv_stack_matches_reference(device, amp):
    """Outputs, frame gradients and (one call: nothing to accumulate) weight gradients bit for bit on the CPU."""
    conv, leaves = make_frames(device)
    expected = run_head(conv_stack_ref, conv, leaves, amp)
    actual = run_head(conv_stack, conv, leaves, amp)
    exact = dict(atol=0, rtol=0) if device == "cpu" else dict(atol=1e-3, rtol=2e-2)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, **exact)


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_conv_stack_keeps_the_frames_conv_cat_keeps(amp):
    """Under autocast the head keeps the frames' bf16 copies that conv_cat made for the same frames (no second
    copy); the reference keeps its own cast of the stack. Without autocast it keeps the frames themselves."""
    conv, leaves = make_frames("cpu")
    cell_conv = nn.Conv2d(2 * CH, COUT, 3, padding=1)
    frame_bytes = 2 * CH * 9 * 7 * (2 if amp == "bf16" else 4)

    def decoder(head):
        frames = [leaf * 1 for leaf in leaves]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            for frame in frames:  # each frame also feeds a cell's convolution, as h_t4 does
                conv_cat(frame, frame, cell_conv)
            head(frames, conv)

    with_head = saved_bytes(lambda: decoder(conv_stack))
    with_reference_head = saved_bytes(lambda: decoder(conv_stack_ref))
    weights = cell_conv.weight.numel() * 4 + conv.weight.numel() * (2 if amp == "bf16" else 4)
    assert with_head == len(leaves) * frame_bytes + cell_conv.weight.numel() * 4 + conv.weight.numel() * 4
    assert with_reference_head == 2 * len(leaves) * frame_bytes + weights
