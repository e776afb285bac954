// lstm_gates: fused CUDA kernels for one ConvLSTM step (forward, and backward to the pre-activation gates and
// c_prev), and their launchers. Plain CUDA, no PyTorch header: nvcc compiles this file on a machine with no GPU
// and no CUDA build of PyTorch. Per-element math: lstm_gates.cuh; launcher contract: lstm_gates.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "lstm_gates.cuh"
#include "lstm_gates.h"

namespace lstm_gates {
namespace {

// Storage <-> math type. Loads widen to acc_t; stores round to nearest.
template <typename storage_t>
struct Io;

template <>
struct Io<float> {
  __device__ static float load(float x) { return x; }
  template <typename acc_t>
  __device__ static float store(acc_t x) { return static_cast<float>(x); }
};

template <>
struct Io<double> {
  __device__ static double load(double x) { return x; }
  template <typename acc_t>
  __device__ static double store(acc_t x) { return static_cast<double>(x); }
};

template <>
struct Io<__half> {
  __device__ static float load(__half x) { return __half2float(x); }
  template <typename acc_t>
  __device__ static __half store(acc_t x) { return __float2half_rn(static_cast<float>(x)); }
};

template <>
struct Io<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  template <typename acc_t>
  __device__ static __nv_bfloat16 store(acc_t x) { return __float2bfloat16_rn(static_cast<float>(x)); }
};

constexpr int kThreads = 256;
// Grid-stride loops past this many blocks; far above what is needed to fill an H200 (132 SMs).
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// The shape in the kernel's index type.
template <typename index_t>
struct Index {
  index_t numel, channels, spatial;
  bool channels_last;
  __device__ explicit Index(const Shape& shape)
      : numel(static_cast<index_t>(shape.numel)), channels(static_cast<index_t>(shape.channels)),
        spatial(static_cast<index_t>(shape.spatial)), channels_last(shape.channels_last) {}
  __device__ index_t gate(index_t n, int k) const { return gate_offset(n, k, channels, spatial, channels_last); }
  __device__ index_t channel(index_t n) const { return channel_of(n, channels, spatial, channels_last); }
};

template <typename acc_t, typename index_t>
__device__ __forceinline__ Peephole<acc_t> load_peephole(const acc_t* w_ci, const acc_t* w_cf, const acc_t* w_co,
                                                         index_t n, const Index<index_t>& index) {
  if (w_ci == nullptr) return {acc_t(0), acc_t(0), acc_t(0)};
  const index_t c = index.channel(n);
  return {w_ci[c], w_cf[c], w_co[c]};
}

template <typename gate_t, typename state_t, typename acc_t, typename index_t>
__global__ void forward_kernel(const gate_t* __restrict__ gates, const state_t* __restrict__ c_prev,
                               const acc_t* __restrict__ w_ci, const acc_t* __restrict__ w_cf,
                               const acc_t* __restrict__ w_co, state_t* __restrict__ h_next,
                               state_t* __restrict__ c_next, Shape shape) {
  const Index<index_t> index(shape);
  const index_t stride = index_t(blockDim.x) * gridDim.x;
  for (index_t n = index_t(blockIdx.x) * blockDim.x + threadIdx.x; n < index.numel; n += stride) {
    acc_t g[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      g[k] = Io<gate_t>::load(gates[index.gate(n, k)]);
    }
    const StepOut<acc_t> out = forward<acc_t>(g[0], g[1], g[2], g[3], Io<state_t>::load(c_prev[n]),
                                              load_peephole(w_ci, w_cf, w_co, n, index));
    h_next[n] = Io<state_t>::store(out.h_next);
    c_next[n] = Io<state_t>::store(out.c_next);
  }
}

template <typename gate_t, typename state_t, typename acc_t, typename index_t>
__global__ void backward_kernel(const gate_t* __restrict__ gates, const state_t* __restrict__ c_prev,
                                const acc_t* __restrict__ w_ci, const acc_t* __restrict__ w_cf,
                                const acc_t* __restrict__ w_co, const state_t* __restrict__ grad_h,
                                const state_t* __restrict__ grad_c, gate_t* __restrict__ grad_gates,
                                state_t* __restrict__ grad_c_prev, Shape shape) {
  const Index<index_t> index(shape);
  const index_t stride = index_t(blockDim.x) * gridDim.x;
  for (index_t n = index_t(blockIdx.x) * blockDim.x + threadIdx.x; n < index.numel; n += stride) {
    index_t offset[4];
    acc_t g[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      offset[k] = index.gate(n, k);
      g[k] = Io<gate_t>::load(gates[offset[k]]);
    }
    const acc_t dh = grad_h != nullptr ? Io<state_t>::load(grad_h[n]) : acc_t(0);
    const acc_t dc = grad_c != nullptr ? Io<state_t>::load(grad_c[n]) : acc_t(0);
    const StepGrad<acc_t> d = backward<acc_t>(g[0], g[1], g[2], g[3], Io<state_t>::load(c_prev[n]),
                                              load_peephole(w_ci, w_cf, w_co, n, index), dh, dc);
    grad_gates[offset[0]] = Io<gate_t>::store(d.d_i);
    grad_gates[offset[1]] = Io<gate_t>::store(d.d_f);
    grad_gates[offset[2]] = Io<gate_t>::store(d.d_o);
    grad_gates[offset[3]] = Io<gate_t>::store(d.d_g);
    grad_c_prev[n] = Io<state_t>::store(d.d_c_prev);
  }
}

unsigned int num_blocks(int64_t numel) {
  const int64_t blocks = (numel + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

static_assert(kMaxBlocks * kThreads == kMaxStride, "lstm_gates.cuh's int32_index assumes this grid-stride bound");

template <typename gate_t, typename state_t>
cudaError_t launch_forward(const void* gates, const void* c_prev, const void* w_ci, const void* w_cf,
                           const void* w_co, void* h_next, void* c_next, Shape shape, cudaStream_t stream) {
  using acc_t = typename std::conditional<std::is_same<state_t, double>::value, double, float>::type;
  if (shape.numel == 0) return cudaSuccess;
  auto kernel = int32_index(shape.numel) ? forward_kernel<gate_t, state_t, acc_t, int32_t>
                                   : forward_kernel<gate_t, state_t, acc_t, int64_t>;
  kernel<<<num_blocks(shape.numel), kThreads, 0, stream>>>(
      static_cast<const gate_t*>(gates), static_cast<const state_t*>(c_prev), static_cast<const acc_t*>(w_ci),
      static_cast<const acc_t*>(w_cf), static_cast<const acc_t*>(w_co), static_cast<state_t*>(h_next),
      static_cast<state_t*>(c_next), shape);
  return cudaGetLastError();
}

template <typename gate_t, typename state_t>
cudaError_t launch_backward(const void* gates, const void* c_prev, const void* w_ci, const void* w_cf,
                            const void* w_co, const void* grad_h, const void* grad_c, void* grad_gates,
                            void* grad_c_prev, Shape shape, cudaStream_t stream) {
  using acc_t = typename std::conditional<std::is_same<state_t, double>::value, double, float>::type;
  if (shape.numel == 0) return cudaSuccess;
  auto kernel = int32_index(shape.numel) ? backward_kernel<gate_t, state_t, acc_t, int32_t>
                                   : backward_kernel<gate_t, state_t, acc_t, int64_t>;
  kernel<<<num_blocks(shape.numel), kThreads, 0, stream>>>(
      static_cast<const gate_t*>(gates), static_cast<const state_t*>(c_prev), static_cast<const acc_t*>(w_ci),
      static_cast<const acc_t*>(w_cf), static_cast<const acc_t*>(w_co), static_cast<const state_t*>(grad_h),
      static_cast<const state_t*>(grad_c), static_cast<gate_t*>(grad_gates), static_cast<state_t*>(grad_c_prev),
      shape);
  return cudaGetLastError();
}

// Forward / backward launches as functors over the storage types, so one dispatch serves both (C++17).
struct ForwardLaunch {
  const void *gates, *c_prev, *w_ci, *w_cf, *w_co;
  void *h_next, *c_next;
  Shape shape;
  cudaStream_t stream;
  template <typename gate_t, typename state_t>
  cudaError_t run() const {
    return launch_forward<gate_t, state_t>(gates, c_prev, w_ci, w_cf, w_co, h_next, c_next, shape, stream);
  }
};

struct BackwardLaunch {
  const void *gates, *c_prev, *w_ci, *w_cf, *w_co, *grad_h, *grad_c;
  void *grad_gates, *grad_c_prev;
  Shape shape;
  cudaStream_t stream;
  template <typename gate_t, typename state_t>
  cudaError_t run() const {
    return launch_backward<gate_t, state_t>(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, grad_gates,
                                            grad_c_prev, shape, stream);
  }
};

template <typename Launch>
cudaError_t dispatch(Dtype gate_dtype, Dtype state_dtype, const Launch& launch) {
  if (gate_dtype == state_dtype) {
    switch (gate_dtype) {
      case Dtype::kFloat32: return launch.template run<float, float>();
      case Dtype::kFloat64: return launch.template run<double, double>();
      case Dtype::kFloat16: return launch.template run<__half, __half>();
      case Dtype::kBFloat16: return launch.template run<__nv_bfloat16, __nv_bfloat16>();
    }
  }
  if (state_dtype == Dtype::kFloat32 && gate_dtype == Dtype::kFloat16) return launch.template run<__half, float>();
  if (state_dtype == Dtype::kFloat32 && gate_dtype == Dtype::kBFloat16) {
    return launch.template run<__nv_bfloat16, float>();
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool supported_dtypes(Dtype gate_dtype, Dtype state_dtype) {
  return gate_dtype == state_dtype ||
         (state_dtype == Dtype::kFloat32 && (gate_dtype == Dtype::kFloat16 || gate_dtype == Dtype::kBFloat16));
}

cudaError_t forward_cuda(Dtype gate_dtype, Dtype state_dtype, const void* gates, const void* c_prev,
                         const void* w_ci, const void* w_cf, const void* w_co, void* h_next, void* c_next,
                         Shape shape, cudaStream_t stream) {
  return dispatch(gate_dtype, state_dtype,
                  ForwardLaunch{gates, c_prev, w_ci, w_cf, w_co, h_next, c_next, shape, stream});
}

cudaError_t backward_cuda(Dtype gate_dtype, Dtype state_dtype, const void* gates, const void* c_prev,
                          const void* w_ci, const void* w_cf, const void* w_co, const void* grad_h,
                          const void* grad_c, void* grad_gates, void* grad_c_prev, Shape shape,
                          cudaStream_t stream) {
  return dispatch(gate_dtype, state_dtype, BackwardLaunch{gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c,
                                                          grad_gates, grad_c_prev, shape, stream});
}

}  // namespace lstm_gates
