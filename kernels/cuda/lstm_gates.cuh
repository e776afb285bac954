// lstm_gates: per-element math of one ConvLSTM step, shared by the CUDA kernels (lstm_gates.cu) and the
// CPU twin (lstm_gates_cpu.cpp, compiled by g++), so the CPU test suite runs the exact code the GPU runs.
//
// No PyTorch and no CUDA header: `acc_t` is float or double (the math type), storage conversion is the caller's.
// The spec is lstm_gates_ref in convlstm/lstm_gates.py:
//   a_i = g_i + w_ci*c_prev   a_f = g_f + w_cf*c_prev   (peephole weights are 0 without peephole)
//   c_next = sigmoid(a_f)*c_prev + sigmoid(a_i)*tanh(g_g)
//   a_o = g_o + w_co*c_next   h_next = sigmoid(a_o)*tanh(c_next)
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
  acc_t d_i, d_f, d_o, d_g;  // gradient of the pre-activation gates (the conv output), order i, f, o, g
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

// The most a CUDA thread's n can pass numel by: the grid-stride loop's stride, 2^20 blocks x 256 threads at most.
constexpr int64_t kMaxStride = int64_t(1) << 28;

// Whether indices can be int32_t: every offset (below 4*numel) and every n (below numel + kMaxStride) fits. Else
// int64_t (B*4C*H*W can pass 2^31). Why not always int64: 64-bit division and remainder cost several times the
// 32-bit ones (kernels/README.md, "Index arithmetic"). The CUDA launchers and the CPU twin both follow it.
LSTM_GATES_HD bool int32_index(int64_t numel) { return 4 * numel + kMaxStride <= int64_t(INT32_MAX); }

// Element n indexes c_prev / h_next / c_next (B, C, H, W), all contiguous in one memory format:
// NCHW (channels_last = false) or NHWC (channels_last = true). `spatial` = H*W.
template <typename index_t>
LSTM_GATES_HD index_t channel_of(index_t n, index_t channels, index_t spatial, bool channels_last) {
  return channels_last ? n % channels : (n / spatial) % channels;
}

// Offset in gates (B, 4C, H, W), same memory format, of gate k (0..3 = i, f, o, g) at element n.
template <typename index_t>
LSTM_GATES_HD index_t gate_offset(index_t n, int k, index_t channels, index_t spatial, bool channels_last) {
  const index_t plane = channels * spatial;  // C*H*W
  const index_t b = n / plane;
  if (!channels_last) {
    return n + 3 * b * plane + k * plane;  // b*4CS + k*CS + c*S + s
  }
  const index_t s = (n - b * plane) / channels;
  return n + 3 * b * plane + 3 * s * channels + k * channels;  // b*4CS + s*4C + k*C + c
}

}  // namespace lstm_gates
