"""lstm_gates: Triton kernels for one ConvLSTM step (the launcher and the op are in triton_launcher.py).

c_prev (B, C, H, W) is seen as rows of contiguous elements: NCHW, a row is one (b, c) plane of H*W; channels_last
(NHWC), a row is one (b, h, w) position's C channels. Each program handles a tile of ROWS rows by COLS columns, so
the position of an element's four gates in gates (B, 4C, H, W), `gate_base + k * gate_stride` for channel block
k = 0..3, comes from per-row arithmetic (one division per row, none per element), and in channels_last the gate loads
are contiguous along the row, so they vectorise. Offsets are int64 (B*4C*H*W can pass 2^31); per row that costs
little. Why tiles: convlstm/ops/README.md, "Index arithmetic" (instruction counts of this and the earlier indexing).
The math runs in float32, or in float64 when ACC_FP64 (float64 inputs: gradcheck needs the full precision).
Gate order: blocks 0 and 1 are i and f; O_SLOT (2 or 3, a constexpr, so each order is its own compiled kernel with
constant offsets) is the block of gate o, and g is in the other; grad_gates is written in the same order.
The per-element formulas are those of csrc/lstm_gates.cuh; the spec is lstm_gates_ref.
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _load(ptr, mask, ACC_FP64: tl.constexpr):
    x = tl.load(ptr, mask=mask, other=0.0)
    if ACC_FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    return x


@triton.jit
def _sigmoid(x):
    # exp of -|x| never overflows, so large |x| gives exactly 0 or 1 with no inf on the way.
    t = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + t), t / (1.0 + t))


@triton.jit
def _tanh(x):
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x >= 0, y, -y)


@triton.jit
def _tile(rows, row_len, channels, CHANNELS_LAST: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """This program's ROWS x COLS tile of c_prev seen as (rows, row_len): the elements n, their mask, their channel,
    the offset of their i gate in gates and the distance between their four gates."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    col = tl.program_id(1) * COLS + tl.arange(0, COLS)
    mask = (r < rows)[:, None] & (col < row_len)[None, :]
    n = r[:, None] * row_len + col[None, :]
    if CHANNELS_LAST:
        gate_base = r[:, None] * (4 * channels) + col[None, :]  # position r's 4C gates in a row: i, f, o, g
        channel = col[None, :]
        gate_stride = channels
    else:
        b = r // channels  # one division per row
        gate_base = (r + 3 * b * channels)[:, None] * row_len + col[None, :]  # gates plane b*4C + c
        channel = (r - b * channels)[:, None]
        # int64: C*H*W fits in 32 bits where 3*C*H*W does not (B=1, C=44, 4100x4100), and Triton passes sizes
        # below 2^31 as i32, so the product and the O_SLOT multiple would wrap.
        gate_stride = tl.cast(channels, tl.int64) * row_len
    return n, mask, channel, gate_base, gate_stride


@triton.jit
def _load_step(gates_ptr, c_prev_ptr, n, mask, gate_base, gate_stride, ACC_FP64: tl.constexpr,
               O_SLOT: tl.constexpr):
    """Elements n's pre-activation gates i, f, o, tanh of gate g, and c_prev, in the math dtype."""
    a_i = _load(gates_ptr + gate_base, mask, ACC_FP64)
    a_f = _load(gates_ptr + gate_base + gate_stride, mask, ACC_FP64)
    a_o = _load(gates_ptr + gate_base + O_SLOT * gate_stride, mask, ACC_FP64)
    g = _tanh(_load(gates_ptr + gate_base + (5 - O_SLOT) * gate_stride, mask, ACC_FP64))
    c_prev = _load(c_prev_ptr + n, mask, ACC_FP64)
    return a_i, a_f, a_o, g, c_prev


@triton.jit
def lstm_gates_fwd_kernel(gates_ptr, c_prev_ptr, w_ci_ptr, w_cf_ptr, w_co_ptr, h_next_ptr, c_next_ptr,
                          rows, row_len, channels,
                          CHANNELS_LAST: tl.constexpr, HAS_PEEPHOLE: tl.constexpr, ACC_FP64: tl.constexpr,
                          O_SLOT: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    n, mask, channel, gate_base, gate_stride = _tile(rows, row_len, channels, CHANNELS_LAST, ROWS, COLS)
    a_i, a_f, a_o, g, c_prev = _load_step(gates_ptr, c_prev_ptr, n, mask, gate_base, gate_stride, ACC_FP64, O_SLOT)
    if HAS_PEEPHOLE:
        a_i += _load(w_ci_ptr + channel, mask, ACC_FP64) * c_prev
        a_f += _load(w_cf_ptr + channel, mask, ACC_FP64) * c_prev
    c_next = _sigmoid(a_f) * c_prev + _sigmoid(a_i) * g
    if HAS_PEEPHOLE:
        a_o += _load(w_co_ptr + channel, mask, ACC_FP64) * c_next
    h_next = _sigmoid(a_o) * _tanh(c_next)
    tl.store(h_next_ptr + n, h_next.to(h_next_ptr.dtype.element_ty), mask=mask)
    tl.store(c_next_ptr + n, c_next.to(c_next_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lstm_gates_bwd_kernel(gates_ptr, c_prev_ptr, w_ci_ptr, w_cf_ptr, w_co_ptr, grad_h_ptr, grad_c_ptr,
                          grad_gates_ptr, grad_c_prev_ptr,
                          rows, row_len, channels,
                          CHANNELS_LAST: tl.constexpr, HAS_PEEPHOLE: tl.constexpr, HAS_GRAD_H: tl.constexpr,
                          HAS_GRAD_C: tl.constexpr, ACC_FP64: tl.constexpr, O_SLOT: tl.constexpr,
                          ROWS: tl.constexpr, COLS: tl.constexpr):
    """Gradient of the pre-activation gates (in the order of gates) and of c_prev. The activations are recomputed
    from gates and c_prev (a few flops per element on a memory-bound kernel) instead of being kept from the forward."""
    n, mask, channel, gate_base, gate_stride = _tile(rows, row_len, channels, CHANNELS_LAST, ROWS, COLS)
    a_i, a_f, a_o, g, c_prev = _load_step(gates_ptr, c_prev_ptr, n, mask, gate_base, gate_stride, ACC_FP64, O_SLOT)
    w_ci = 0.0
    w_cf = 0.0
    w_co = 0.0
    if HAS_PEEPHOLE:
        w_ci = _load(w_ci_ptr + channel, mask, ACC_FP64)
        w_cf = _load(w_cf_ptr + channel, mask, ACC_FP64)
        w_co = _load(w_co_ptr + channel, mask, ACC_FP64)
        a_i += w_ci * c_prev
        a_f += w_cf * c_prev
    i = _sigmoid(a_i)
    f = _sigmoid(a_f)
    c_next = f * c_prev + i * g
    if HAS_PEEPHOLE:
        a_o += w_co * c_next
    o = _sigmoid(a_o)
    tanh_c = _tanh(c_next)

    d_c = tl.zeros_like(c_prev)
    d_o = tl.zeros_like(c_prev)
    if HAS_GRAD_C:
        d_c += _load(grad_c_ptr + n, mask, ACC_FP64)
    if HAS_GRAD_H:
        grad_h = _load(grad_h_ptr + n, mask, ACC_FP64)
        d_o = grad_h * tanh_c * o * (1.0 - o)
        # c_next reaches the loss through c_next itself, through h_next, and through the o peephole.
        d_c += grad_h * o * (1.0 - tanh_c * tanh_c) + d_o * w_co
    d_i = d_c * g * i * (1.0 - i)
    d_f = d_c * c_prev * f * (1.0 - f)
    d_g = d_c * i * (1.0 - g * g)
    d_c_prev = d_c * f + d_i * w_ci + d_f * w_cf

    out_ty = grad_gates_ptr.dtype.element_ty
    tl.store(grad_gates_ptr + gate_base, d_i.to(out_ty), mask=mask)
    tl.store(grad_gates_ptr + gate_base + gate_stride, d_f.to(out_ty), mask=mask)
    tl.store(grad_gates_ptr + gate_base + O_SLOT * gate_stride, d_o.to(out_ty), mask=mask)
    tl.store(grad_gates_ptr + gate_base + (5 - O_SLOT) * gate_stride, d_g.to(out_ty), mask=mask)
    tl.store(grad_c_prev_ptr + n, d_c_prev.to(grad_c_prev_ptr.dtype.element_ty), mask=mask)


# True when TRITON_INTERPRET=1 was set before triton was imported: the kernels then run on CPU tensors.
INTERPRETED = isinstance(lstm_gates_fwd_kernel, InterpretedFunction)
