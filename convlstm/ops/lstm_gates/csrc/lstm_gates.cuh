// lstm_gates: per-element math of one ConvLSTM step, shared by the CUDA kernels (lstm_gates.cu) and the
// CPU twin (lstm_gates_cpu.cpp, compiled by g++), so the CPU test suite runs the exact code the GPU runs.
//
// No PyTorch and no CUDA header: `acc_t` is float or double (the math type), storage conversion is the caller's.
// The spec is lstm_gates_ref in convlstm/ops/lstm_gates/ref.py:
//   a_i = g_i + w_ci*c_prev   a_f = g_f + w_cf*c_prev   (peephole weights are 0 without peephole)
//   c_next = sigmoid(a_f)*c_prev + sigmoid(a_i)*tanh(g_g)
//   a_o = g_o + w_co*c_next   h_next = sigmoid(a_o)*tanh(c_next)
// gates' four channel blocks are i, f, o, g (o_slot 2, the widely used ConvLSTMCell) or i, f, g, o (o_slot 3,
// OpenSTL's ConvLSTM); the thread bodies route blocks 2 and 3 to o and g, and the gradients back, in that order.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LSTM_GATES_HD __host__ __device__ __forceinline__
#else
#define LSTM_GATES_HD inline
#endif

namespace lstm_gates {

LSTM_GATES_HD float exp_(float x) { return expf(x); }
LSTM_GATES_HD double exp_(double x) { return exp(x); }
LSTM_GATES_HD float tanh_(float x) { return tanhf(x); }
LSTM_GATES_HD double tanh_(double x) { return tanh(x); }

// exp(-x) overflows to inf for very negative x and 1/inf = 0, the correct limit.
template <typename acc_t>
LSTM_GATES_HD acc_t sigmoid_(acc_t x) { return acc_t(1) / (acc_t(1) + exp_(-x)); }

template <typename acc_t>
struct Peephole {
  acc_t ci, cf, co;  // this element's channel weights; all 0 without peephole
};

template <typename acc_t>
struct StepOut {
  acc_t h_next, c_next;
};

template <typename acc_t>
LSTM_GATES_HD StepOut<acc_t> forward(acc_t g_i, acc_t g_f, acc_t g_o, acc_t g_g, acc_t c_prev,
                                     Peephole<acc_t> w) {
  const acc_t i = sigmoid_(g_i + w.ci * c_prev);
  const acc_t f = sigmoid_(g_f + w.cf * c_prev);
  const acc_t g = tanh_(g_g);
  const acc_t c_next = f * c_prev + i * g;
  const acc_t o = sigmoid_(g_o + w.co * c_next);
  return {o * tanh_(c_next), c_next};
}

template <typename acc_t>
struct StepGrad {
  acc_t d_i, d_f, d_o, d_g;  // gradient of the pre-activation gates (the conv output)
  acc_t d_c_prev;
};

// Backward from the pre-activation gates and c_prev alone: the activations are recomputed (a few flops per
// element) rather than stored, which is what keeps the saved state at gates + c_prev. grad_h / grad_c are 0 for
// an output that received no gradient.
template <typename acc_t>
LSTM_GATES_HD StepGrad<acc_t> backward(acc_t g_i, acc_t g_f, acc_t g_o, acc_t g_g, acc_t c_prev,
                                       Peephole<acc_t> w, acc_t grad_h, acc_t grad_c) {
  const acc_t one = acc_t(1);
  const acc_t i = sigmoid_(g_i + w.ci * c_prev);
  const acc_t f = sigmoid_(g_f + w.cf * c_prev);
  const acc_t g = tanh_(g_g);
  const acc_t c_next = f * c_prev + i * g;
  const acc_t o = sigmoid_(g_o + w.co * c_next);
  const acc_t tanh_c = tanh_(c_next);

  StepGrad<acc_t> out;
  out.d_o = grad_h * tanh_c * o * (one - o);
  // c_next reaches the loss through c_next itself, through h_next, and through the o peephole.
  const acc_t d_c = grad_c + grad_h * o * (one - tanh_c * tanh_c) + out.d_o * w.co;
  out.d_i = d_c * g * i * (one - i);
  out.d_f = d_c * c_prev * f * (one - f);
  out.d_g = d_c * i * (one - g * g);
  out.d_c_prev = d_c * f + out.d_i * w.ci + out.d_f * w.cf;
  return out;
}

// How the CUDA grid covers the elements; the CPU twin walks the same grid. A block's kThreads threads take
// kThreads * kElemsPerThread consecutive elements, thread t elements t, t + kThreads, ... (each warp load stays
// coalesced), and loads all of them before computing any. Why several per thread: a bf16 forward reads 10 bytes
// per element; one element per thread leaves at most 2048 threads x 10 B = 20 KB of loads in flight per SM, while
// the H200's specified 4.8 TB/s at ~600 ns of loaded latency (published H100 measurements; not measured here)
// over 132 SMs wants ~22 KB (Little's law). With 4 per thread, 48 registers (1280 threads per SM) give 50 KB
// (convlstm/ops/README.md, "Elements per thread"). PyTorch's elementwise kernels take 4 or more per thread too. Past kMaxBlocks blocks the grid
// strides (far more than fill an H200: 132 SMs x 8 resident blocks).
constexpr int kThreads = 256;
constexpr int kElemsPerThread = 4;
constexpr int64_t kMaxBlocks = int64_t(1) << 18;
constexpr int64_t kMaxStride = kMaxBlocks * kThreads * kElemsPerThread;  // 2^28 elements

LSTM_GATES_HD int64_t num_blocks(int64_t numel) {
  const int64_t per_block = kThreads * kElemsPerThread;
  const int64_t blocks = (numel + per_block - 1) / per_block;
  return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

// Whether indices can be int32_t: every offset (below 4*numel) and every n a thread forms (below numel +
// kMaxStride) fits. Else int64_t (B*4C*H*W can pass 2^31). Why not always int64: 64-bit division and remainder
// cost several times the 32-bit ones (convlstm/ops/README.md, "Index arithmetic"). The CUDA launchers and the CPU
// twin both follow it.
LSTM_GATES_HD bool int32_index(int64_t numel) { return 4 * numel + kMaxStride <= int64_t(INT32_MAX); }

// The shape in the kernel's index type. Element n indexes c_prev / h_next / c_next (B, C, H, W), all contiguous
// in one memory format: NCHW (channels_last = false) or NHWC (channels_last = true). `spatial` = H*W.
// `o_last`: gates' blocks are i, f, g, o (o_slot 3) rather than i, f, o, g (o_slot 2).
template <typename index_t>
struct Index {
  index_t numel, channels, spatial;
  bool channels_last, o_last;

  LSTM_GATES_HD Index(int64_t numel_, int64_t channels_, int64_t spatial_, bool channels_last_, int o_slot)
      : numel(static_cast<index_t>(numel_)), channels(static_cast<index_t>(channels_)),
        spatial(static_cast<index_t>(spatial_)), channels_last(channels_last_), o_last(o_slot == 3) {}

  LSTM_GATES_HD index_t channel(index_t n) const { return channels_last ? n % channels : (n / spatial) % channels; }

  // Offset in gates (B, 4C, H, W), same memory format, of gate i at element n; block k (0..3) lies
  // k * gate_stride() further.
  LSTM_GATES_HD index_t gate(index_t n) const {
    const index_t plane = channels * spatial;  // C*H*W
    const index_t b = n / plane;
    if (!channels_last) {
      return n + 3 * b * plane;  // b*4CS + c*S + s
    }
    const index_t s = (n - b * plane) / channels;
    return n + 3 * b * plane + 3 * s * channels;  // b*4CS + s*4C + c
  }
  LSTM_GATES_HD index_t gate_stride() const { return channels_last ? channels : channels * spatial; }
};

template <typename acc_t, typename index_t>
LSTM_GATES_HD Peephole<acc_t> peephole_at(const acc_t* w_ci, const acc_t* w_cf, const acc_t* w_co, index_t n,
                                          const Index<index_t>& index) {
  if (w_ci == nullptr) return {acc_t(0), acc_t(0), acc_t(0)};
  const index_t c = index.channel(n);
  return {w_ci[c], w_cf[c], w_co[c]};
}

// Device passes only: nvcc's host pass hands pragmas to the host compiler, which does not know this one.
#if defined(__CUDA_ARCH__)
#define LSTM_GATES_UNROLL _Pragma("unroll")
#else
#define LSTM_GATES_UNROLL
#endif

// The work of CUDA thread `thread` of block `block` in a grid of `grid` blocks: the whole body of the forward
// kernel. `Io<storage_t>::load` widens a stored value to the math type, `Io<storage_t>::store` rounds it back
// (CUDA's and the CPU twin's half types differ; both round to nearest even).
// Gate order: loads and stores stay in memory order, block k at k * gate_stride(), and a select per gate picks o and
// g from blocks 2 and 3 (index.o_last, one runtime flag, so no extra kernels). Measured with ptxas, sm_90: the same
// registers as the fixed order for the fp32, fp16 and bf16 kernels (46-54 forward, 64-80 backward), +5 to +35
// instructions per kernel (convlstm/ops/README.md, "Gate order").
template <template <typename> class Io, typename gate_t, typename state_t, typename acc_t, typename index_t>
LSTM_GATES_HD void forward_thread(const gate_t* __restrict__ gates, const state_t* __restrict__ c_prev,
                                  const acc_t* __restrict__ w_ci, const acc_t* __restrict__ w_cf,
                                  const acc_t* __restrict__ w_co, state_t* __restrict__ h_next,
                                  state_t* __restrict__ c_next, const Index<index_t>& index, index_t block,
                                  index_t thread, index_t grid) {
  const index_t stride = grid * (kThreads * kElemsPerThread);
  for (index_t first = block * (kThreads * kElemsPerThread) + thread; first < index.numel; first += stride) {
    acc_t g[kElemsPerThread][4] = {}, c[kElemsPerThread] = {};
    LSTM_GATES_UNROLL
    for (int j = 0; j < kElemsPerThread; ++j) {
      const index_t n = first + j * kThreads;
      if (n >= index.numel) break;
      const index_t offset = index.gate(n);
      LSTM_GATES_UNROLL
      for (int k = 0; k < 4; ++k) g[j][k] = Io<gate_t>::load(gates[offset + k * index.gate_stride()]);
      c[j] = Io<state_t>::load(c_prev[n]);
    }
    LSTM_GATES_UNROLL
    for (int j = 0; j < kElemsPerThread; ++j) {
      const index_t n = first + j * kThreads;
      if (n >= index.numel) break;
      const acc_t g_o = index.o_last ? g[j][3] : g[j][2], g_g = index.o_last ? g[j][2] : g[j][3];
      const StepOut<acc_t> out = forward<acc_t>(g[j][0], g[j][1], g_o, g_g, c[j],
                                                peephole_at(w_ci, w_cf, w_co, n, index));
      h_next[n] = Io<state_t>::store(out.h_next);
      c_next[n] = Io<state_t>::store(out.c_next);
    }
  }
}

// The whole body of the backward kernel, same grid as forward_thread. grad_h / grad_c may be null; grad_gates is
// written in the order of gates.
template <template <typename> class Io, typename gate_t, typename state_t, typename acc_t, typename index_t>
LSTM_GATES_HD void backward_thread(const gate_t* __restrict__ gates, const state_t* __restrict__ c_prev,
                                   const acc_t* __restrict__ w_ci, const acc_t* __restrict__ w_cf,
                                   const acc_t* __restrict__ w_co, const state_t* __restrict__ grad_h,
                                   const state_t* __restrict__ grad_c, gate_t* __restrict__ grad_gates,
                                   state_t* __restrict__ grad_c_prev, const Index<index_t>& index, index_t block,
                                   index_t thread, index_t grid) {
  const index_t stride = grid * (kThreads * kElemsPerThread);
  for (index_t first = block * (kThreads * kElemsPerThread) + thread; first < index.numel; first += stride) {
    acc_t g[kElemsPerThread][4] = {}, c[kElemsPerThread] = {}, dh[kElemsPerThread] = {}, dc[kElemsPerThread] = {};
    index_t offset[kElemsPerThread] = {};
    LSTM_GATES_UNROLL
    for (int j = 0; j < kElemsPerThread; ++j) {
      const index_t n = first + j * kThreads;
      if (n >= index.numel) break;
      offset[j] = index.gate(n);
      LSTM_GATES_UNROLL
      for (int k = 0; k < 4; ++k) g[j][k] = Io<gate_t>::load(gates[offset[j] + k * index.gate_stride()]);
      c[j] = Io<state_t>::load(c_prev[n]);
      if (grad_h != nullptr) dh[j] = Io<state_t>::load(grad_h[n]);
      if (grad_c != nullptr) dc[j] = Io<state_t>::load(grad_c[n]);
    }
    LSTM_GATES_UNROLL
    for (int j = 0; j < kElemsPerThread; ++j) {
      const index_t n = first + j * kThreads;
      if (n >= index.numel) break;
      const acc_t g_o = index.o_last ? g[j][3] : g[j][2], g_g = index.o_last ? g[j][2] : g[j][3];
      const StepGrad<acc_t> d = backward<acc_t>(g[j][0], g[j][1], g_o, g_g, c[j],
                                                peephole_at(w_ci, w_cf, w_co, n, index), dh[j], dc[j]);
      const index_t step = index.gate_stride();
      grad_gates[offset[j]] = Io<gate_t>::store(d.d_i);
      grad_gates[offset[j] + step] = Io<gate_t>::store(d.d_f);
      grad_gates[offset[j] + 2 * step] = Io<gate_t>::store(index.o_last ? d.d_g : d.d_o);
      grad_gates[offset[j] + 3 * step] = Io<gate_t>::store(index.o_last ? d.d_o : d.d_g);
      grad_c_prev[n] = Io<state_t>::store(d.d_c_prev);
    }
  }
}

}  // namespace lstm_gates
