"""conv_cat against conv_cat_ref and conv_frame against conv_stack_ref: the same outputs and gradients, less kept
for backward (convlstm/ops/conv_cat.py, convlstm/ops/conv_frame.py).

As in the model, h feeds two convolutions (its cell's next step and the cell above), x one. On the CPU results are
compared bit for bit; on a GPU cuDNN may pick another algorithm (or one with atomics) for the same call, so within
a tolerance.
"""
import gc
import weakref

import pytest
import torch
import torch.utils.checkpoint
from torch import nn

from convlstm.ops.conv_cat import conv_cat, conv_cat_ref
from convlstm.ops.conv_frame import conv_frame, conv_frame_applies, conv_stack_ref
from convlstm.memory import saved_bytes
from helpers import ON_GPU, exact_cudnn

CX, CH, COUT = 5, 8, 32


DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


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
@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
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


@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
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


@pytest.mark.parametrize("changed", ["h", "weight"])
def test_conv_cat_in_place_change_before_backward_is_an_error(changed):
    """Without autocast conv_cat keeps h and the weight themselves: changing one in place before backward is an
    error that names it, not a gradient of the new values."""
    conv, x, h = make("contiguous")
    base = h * 1  # a non-leaf that can change in place
    out = conv_cat(x, base, conv)
    with torch.no_grad():
        (base if changed == "h" else conv.weight).mul_(2)
    with pytest.raises(RuntimeError, match=f"conv_cat: {changed} was modified in place"):
        out.sum().backward()


@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
def test_conv_cat_under_checkpoint_and_offloading(amp):
    """The caller's saved-tensor hooks see what conv_cat keeps: torch.utils.checkpoint (non-reentrant, itself
    hooks) and save_on_cpu give the gradients of a plain run."""
    conv, x, h = make("contiguous")

    def grads(wrap):
        conv.zero_grad(set_to_none=True)
        x.grad = h.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = wrap(lambda: two_steps(conv_cat, conv, x, h, amp))
        out.float().square().sum().backward()
        return [out.detach(), x.grad, h.grad, conv.weight.grad, conv.bias.grad]

    expected = grads(lambda fn: fn())
    for wrap in (lambda fn: torch.utils.checkpoint.checkpoint(fn, use_reentrant=False),
                 lambda fn: _with_hooks(torch.autograd.graph.save_on_cpu(), fn)):
        for a, e in zip(grads(wrap), expected):
            torch.testing.assert_close(a, e, atol=0, rtol=0)


def _with_hooks(hooks, fn):
    with hooks:
        return fn()


def test_conv_cat_keeps_no_float32_state_under_autocast():
    """Under autocast conv_cat keeps h's bf16 copy only: a float32 h that nothing else holds is freed after the
    forward (its hooks do not hold it)."""
    conv, x, h = make("contiguous")
    state = h * 1
    alive = weakref.ref(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv_cat(x, state, conv)
    del state
    gc.collect()
    assert alive() is None
    out.float().sum().backward()
    assert h.grad is not None


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


# ---- conv_frame: the model's Conv3d head, frame by frame (convlstm/conv_frame.py) --------------------------------

def make_frames(device, count=4, seed=0, layout="contiguous"):
    torch.manual_seed(seed)
    conv = nn.Conv3d(CH, 1, (1, 3, 3), padding=(0, 1, 1)).to(device)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    leaves = [torch.randn(2, CH, 9, 7, device=device).contiguous(memory_format=memory_format).requires_grad_()
              for _ in range(count)]
    return conv, leaves


def conv_frames(frames, conv):
    """The head as the model runs it with fused cells: conv_frame on each frame, outputs joined along T."""
    return torch.cat([conv_frame(frame, conv) for frame in frames], 2)


def run_head(fn, conv, leaves, amp):
    conv.zero_grad(set_to_none=True)
    for leaf in leaves:
        leaf.grad = None
    frames = [leaf * 1 for leaf in leaves]  # non-leaf frames, as the decoder's outputs are
    with torch.autocast(leaves[0].device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        out = torch.sigmoid(fn(frames, conv))
    out.float().square().sum().backward()
    return [out.detach(), *(leaf.grad for leaf in leaves), conv.weight.grad, conv.bias.grad]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_conv_frame_matches_conv_stack_ref(device, amp, layout):
    """Outputs, frame gradients and parameter gradients: equal up to the summation order of a 2-D convolution per
    frame instead of a Conv3d over all (float32: 1e-5), and under bf16 up to a rounding of the bf16 outputs and
    gradients (the reference rounds the weight gradient of all frames to bf16 once, conv_frame each frame's). Frames
    in channels_last too (the cells' outputs under channels_last)."""
    conv, leaves = make_frames(device, layout=layout)
    with exact_cudnn():
        expected = run_head(conv_stack_ref, conv, leaves, amp)
        actual = run_head(conv_frames, conv, leaves, amp)
    tolerance = dict(atol=1e-5, rtol=1e-5) if amp == "none" else dict(atol=1e-2, rtol=2e-2)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, **tolerance)


def test_conv_frame_bf16_weight_gradient_on_one_cpu_thread(one_cpu_thread):
    """On one CPU thread (torch 2.11, 2.13) a bf16 Conv3d over a one-frame input gives a NaN weight gradient at this
    size; conv_frame runs a 2-D convolution instead, whose gradient matches float32's."""
    torch.manual_seed(0)
    conv = nn.Conv3d(64, 1, (1, 3, 3), padding=(0, 1, 1))
    frame = torch.randn(1, 64, 64, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv_frame(frame * 1, conv).float().sigmoid().sum().backward()
    bf16_grad, conv.weight.grad = conv.weight.grad, None
    conv_stack_ref([frame * 1], conv).sigmoid().sum().backward()
    torch.testing.assert_close(bf16_grad, conv.weight.grad, atol=0.5, rtol=0.05)


def test_conv_frame_applies_to_one_frame_deep_kernels_only():
    """Per frame is slice t of the head only when output frame t reads input frame t alone; nothing to keep less
    for without autograd to record."""
    conv, leaves = make_frames("cpu")
    assert conv_frame_applies(conv, leaves)
    for kwargs in (dict(kernel_size=(3, 3, 3), padding=(1, 1, 1)), dict(kernel_size=(1, 3, 3), padding=(1, 1, 1)),
                   dict(kernel_size=(1, 3, 3), padding=(0, 1, 1), stride=(2, 1, 1))):
        assert not conv_frame_applies(nn.Conv3d(CH, 1, **kwargs), leaves)
    with torch.no_grad():
        assert not conv_frame_applies(conv, leaves)


@pytest.mark.parametrize("amp", ["none", "bf16"], ids=["no-amp", "amp-bf16"])
def test_conv_frame_keeps_the_frames_conv_cat_keeps(amp):
    """Under autocast the head and conv_cat share each frame's one bf16 copy; the reference keeps its own cast of
    the stack as well. Without autocast both keep the frames themselves."""
    conv, leaves = make_frames("cpu")
    cell_conv = nn.Conv2d(2 * CH, COUT, 3, padding=1)
    frame_bytes = 2 * CH * 9 * 7 * (2 if amp == "bf16" else 4)

    def decoder(head):
        frames = [leaf * 1 for leaf in leaves]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):  # outputs kept to the end, as
            if head is conv_stack_ref:                                             # a loss would keep them
                outputs = [conv_cat(frame, frame, cell_conv) for frame in frames]  # (h_t4 feeds the next step too)
                return outputs + [head(frames, conv)]
            # the model's order: the head's cast first, then the next step's conv_cat reads it
            return [(conv_frame(frame, conv), conv_cat(frame, frame, cell_conv)) for frame in frames]

    with_head = saved_bytes(lambda: decoder(conv_frame))
    with_reference_head = saved_bytes(lambda: decoder(conv_stack_ref))
    weight_copy = conv.weight.numel() * (2 if amp == "bf16" else 4)  # one per call under autocast
    cell_weight = cell_conv.weight.numel() * 4
    assert with_head == len(leaves) * (frame_bytes + (weight_copy if amp == "bf16" else 0)) + cell_weight + (
        0 if amp == "bf16" else weight_copy)
    assert with_reference_head == 2 * len(leaves) * frame_bytes + cell_weight + weight_copy
