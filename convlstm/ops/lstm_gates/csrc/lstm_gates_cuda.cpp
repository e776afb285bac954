// lstm_gates: PyTorch binding of the CUDA launchers (lstm_gates.cu). Built by setup.py as
// convlstm.ops.lstm_gates._cuda, or JIT-built by convlstm/ops/lstm_gates/cuda.py; the op around it is in that module.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "lstm_gates.h"
#include "lstm_gates_torch.h"

namespace lstm_gates {
namespace {

Shape shape_of(const at::Tensor& c_prev, bool channels_last, int64_t o_slot) {
  return {c_prev.numel(), c_prev.size(1), c_prev.size(2) * c_prev.size(3), channels_last, static_cast<int>(o_slot)};
}

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "lstm_gates: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::vector<at::Tensor> forward_op(const at::Tensor& gates, const at::Tensor& c_prev,
                                   const std::optional<at::Tensor>& w_ci, const std::optional<at::Tensor>& w_cf,
                                   const std::optional<at::Tensor>& w_co, bool channels_last, int64_t o_slot) {
  check_inputs(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot);
  TORCH_CHECK(gates.is_cuda(), "lstm_gates (cuda): tensors must be on a CUDA device, got ", gates.device());
  const c10::cuda::CUDAGuard guard(gates.device());
  auto h_next = at::empty_like(c_prev, memory_format(channels_last));
  auto c_next = at::empty_like(c_prev, memory_format(channels_last));
  check_launch(forward_cuda(static_cast<Dtype>(dtype_code(gates.scalar_type())),
                            static_cast<Dtype>(dtype_code(c_prev.scalar_type())), gates.data_ptr(),
                            c_prev.data_ptr(), data_or_null(w_ci), data_or_null(w_cf), data_or_null(w_co),
                            h_next.data_ptr(), c_next.data_ptr(), shape_of(c_prev, channels_last, o_slot),
                            c10::cuda::getCurrentCUDAStream().stream()));
  return {h_next, c_next};
}

std::vector<at::Tensor> backward_op(const at::Tensor& gates, const at::Tensor& c_prev,
                                    const std::optional<at::Tensor>& w_ci, const std::optional<at::Tensor>& w_cf,
                                    const std::optional<at::Tensor>& w_co, const std::optional<at::Tensor>& grad_h,
                                    const std::optional<at::Tensor>& grad_c, bool channels_last, int64_t o_slot) {
  check_inputs(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot);
  check_grad(grad_h, c_prev, channels_last, "grad_h");
  check_grad(grad_c, c_prev, channels_last, "grad_c");
  TORCH_CHECK(gates.is_cuda(), "lstm_gates (cuda): tensors must be on a CUDA device, got ", gates.device());
  const c10::cuda::CUDAGuard guard(gates.device());
  auto grad_gates = at::empty_like(gates, memory_format(channels_last));
  auto grad_c_prev = at::empty_like(c_prev, memory_format(channels_last));
  check_launch(backward_cuda(static_cast<Dtype>(dtype_code(gates.scalar_type())),
                             static_cast<Dtype>(dtype_code(c_prev.scalar_type())), gates.data_ptr(),
                             c_prev.data_ptr(), data_or_null(w_ci), data_or_null(w_cf), data_or_null(w_co),
                             data_or_null(grad_h), data_or_null(grad_c), grad_gates.data_ptr(),
                             grad_c_prev.data_ptr(), shape_of(c_prev, channels_last, o_slot),
                             c10::cuda::getCurrentCUDAStream().stream()));
  return {grad_gates, grad_c_prev};
}

}  // namespace
}  // namespace lstm_gates

#define LSTM_GATES_STR(x) #x
#define LSTM_GATES_XSTR(x) LSTM_GATES_STR(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pybind11::arg;
#ifdef LSTM_GATES_SOURCES_SHA
  // The sources this was built from (stamp.py): cuda.py JIT-builds instead of loading a stale prebuilt extension.
  m.attr("sources_sha") = LSTM_GATES_XSTR(LSTM_GATES_SOURCES_SHA);
#endif
  m.def("forward", &lstm_gates::forward_op, "lstm_gates forward (CUDA) -> [h_next, c_next]", arg("gates"),
        arg("c_prev"), arg("w_ci"), arg("w_cf"), arg("w_co"), arg("channels_last"), arg("o_slot"));
  m.def("backward", &lstm_gates::backward_op, "lstm_gates backward (CUDA) -> [grad_gates, grad_c_prev]",
        arg("gates"), arg("c_prev"), arg("w_ci"), arg("w_cf"), arg("w_co"), arg("grad_h"), arg("grad_c"),
        arg("channels_last"), arg("o_slot"));
}
