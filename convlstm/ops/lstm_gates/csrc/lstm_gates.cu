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

// Storage <-> math type. Loads widen to acc_t; stores round to nearest even. Host and device, as are the shared
// thread bodies (lstm_gates.cuh) that call them.
template <typename storage_t>
struct Io;

template <>
struct Io<float> {
  LSTM_GATES_HD static float load(float x) { return x; }
  template <typename acc_t>
  LSTM_GATES_HD static float store(acc_t x) { return static_cast<float>(x); }
};

template <>
struct Io<double> {
  LSTM_GATES_HD static double load(double x) { return x; }
  template <typename acc_t>
  LSTM_GATES_HD static double store(acc_t x) { return static_cast<double>(x); }
};

template <>
struct Io<__half> {
  LSTM_GATES_HD static float load(__half x) { return __half2float(x); }
  template <typename acc_t>
  LSTM_GATES_HD static __half store(acc_t x) { return __float2half_rn(static_cast<float>(x)); }
};

template <>
struct Io<__nv_bfloat16> {
  LSTM_GATES_HD static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  template <typename acc_t>
  LSTM_GATES_HD static __nv_bfloat16 store(acc_t x) { return __float2bfloat16_rn(static_cast<float>(x)); }
};

// The kernels are the shared thread bodies at this thread's place in the grid (num_blocks(numel) blocks of
// kThreads threads, both from lstm_gates.cuh).
template <typename gate_t, typename state_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const gate_t* __restrict__ gates, const state_t* __restrict__ c_prev,
                   const acc_t* __restrict__ w_ci, const acc_t* __restrict__ w_cf, const acc_t* __restrict__ w_co,
                   state_t* __restrict__ h_next, state_t* __restrict__ c_next, Shape shape) {
  const Index<index_t> index(shape.numel, shape.channels, shape.spatial, shape.channels_last, shape.o_slot);
  forward_thread<Io>(gates, c_prev, w_ci, w_cf, w_co, h_next, c_next, index, index_t(blockIdx.x),
                     index_t(threadIdx.x), index_t(gridDim.x));
}

template <typename gate_t, typename state_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const gate_t* __restrict__ gates, const state_t* __restrict__ c_prev,
                    const acc_t* __restrict__ w_ci, const acc_t* __restrict__ w_cf, const acc_t* __restrict__ w_co,
                    const state_t* __restrict__ grad_h, const state_t* __restrict__ grad_c,
                    gate_t* __restrict__ grad_gates, state_t* __restrict__ grad_c_prev, Shape shape) {
  const Index<index_t> index(shape.numel, shape.channels, shape.spatial, shape.channels_last, shape.o_slot);
  backward_thread<Io>(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, grad_gates, grad_c_prev, index,
                      index_t(blockIdx.x), index_t(threadIdx.x), index_t(gridDim.x));
}

template <typename gate_t, typename state_t>
cudaError_t launch_forward(const void* gates, const void* c_prev, const void* w_ci, const void* w_cf,
                           const void* w_co, void* h_next, void* c_next, Shape shape, cudaStream_t stream) {
  using acc_t = typename std::conditional<std::is_same<state_t, double>::value, double, float>::type;
  if (shape.numel == 0) return cudaSuccess;
  auto kernel = int32_index(shape.numel) ? forward_kernel<gate_t, state_t, acc_t, int32_t>
                                   : forward_kernel<gate_t, state_t, acc_t, int64_t>;
  kernel<<<static_cast<unsigned int>(num_blocks(shape.numel)), kThreads, 0, stream>>>(
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
  kernel<<<static_cast<unsigned int>(num_blocks(shape.numel)), kThreads, 0, stream>>>(
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
  if (launch.shape.o_slot != 2 && launch.shape.o_slot != 3) return cudaErrorInvalidValue;
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
