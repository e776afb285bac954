// lstm_gates: launchers of the CUDA kernels in lstm_gates.cu, callable from any C++ (no PyTorch types).
//
// Tensors are raw device pointers. c_prev / h_next / c_next / grad_h / grad_c / grad_c_prev are (B, C, H, W) and
// gates / grad_gates (B, 4C, H, W), all contiguous in one memory format (NCHW, or NHWC when channels_last).
// gates' four channel blocks are i, f, o, g (shape.o_slot 2) or i, f, g, o (3); grad_gates comes out in the same order.
// Storage dtypes: gates in `gate_dtype`, the C-sized tensors in `state_dtype`; the pairs dispatched are those of
// op.py's KERNEL_DTYPES (checked by lstm_gates_torch.h's supported_pair before a launch).
// The math runs in float32, or float64 when state_dtype is float64; the peephole weights w_ci, w_cf, w_co are
// (C,) in that math type, or all null without peephole. grad_h / grad_c may be null (the output got no gradient).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace lstm_gates {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct Shape {
  int64_t numel;     // B*C*H*W: elements of c_prev
  int64_t channels;  // C
  int64_t spatial;   // H*W
  bool channels_last;
  int o_slot;        // gates' channel block holding gate o: 2 (i, f, o, g) or 3 (i, f, g, o); g is in the other
};

// Both return cudaSuccess, the launch error, or cudaErrorInvalidValue for an unsupported dtype pair or an o_slot
// other than 2 or 3.
cudaError_t forward_cuda(Dtype gate_dtype, Dtype state_dtype, const void* gates, const void* c_prev,
                         const void* w_ci, const void* w_cf, const void* w_co, void* h_next, void* c_next,
                         Shape shape, cudaStream_t stream);

cudaError_t backward_cuda(Dtype gate_dtype, Dtype state_dtype, const void* gates, const void* c_prev,
                          const void* w_ci, const void* w_cf, const void* w_co, const void* grad_h,
                          const void* grad_c, void* grad_gates, void* grad_c_prev, Shape shape,
                          cudaStream_t stream);

}  // namespace lstm_gates
