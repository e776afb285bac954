// lstm_gates: argument checks shared by the two PyTorch bindings, the CUDA one (lstm_gates_cuda.cpp) and the CPU
// twin (lstm_gates_cpu.cpp), so the CPU test suite exercises the checks the CUDA binding runs.
// The Python op (op.py) already normalised dtypes and layout; these checks catch misuse of
// the raw bindings with a message instead of a wrong answer.
#pragma once

#include <torch/extension.h>

#include <optional>

namespace lstm_gates {

// Mirrors lstm_gates::Dtype in lstm_gates.h without including that CUDA header here.
inline int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kHalf: return 2;
    case at::kBFloat16: return 3;
    default: TORCH_CHECK(false, "lstm_gates: unsupported dtype ", t, " (expected float32/64, float16, bfloat16)");
  }
  return -1;
}

inline bool supported_pair(at::ScalarType gate, at::ScalarType state) {
  return gate == state || (state == at::kFloat && (gate == at::kHalf || gate == at::kBFloat16));
}

inline at::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// o_slot: gates' channel block holding gate o, 2 (blocks i, f, o, g) or 3 (i, f, g, o).
inline void check_inputs(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                         const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co,
                         bool channels_last, int64_t o_slot) {
  TORCH_CHECK(o_slot == 2 || o_slot == 3, "lstm_gates: o_slot must be 2 (gates i, f, o, g) or 3 (i, f, g, o), got ",
              o_slot);
  TORCH_CHECK(gates.dim() == 4 && c_prev.dim() == 4 && gates.size(0) == c_prev.size(0) &&
                  gates.size(1) == 4 * c_prev.size(1) && gates.size(2) == c_prev.size(2) &&
                  gates.size(3) == c_prev.size(3),
              "lstm_gates: expected gates (B, 4C, H, W) and c_prev (B, C, H, W), got ", gates.sizes(), " and ",
              c_prev.sizes());
  TORCH_CHECK(gates.device() == c_prev.device(), "lstm_gates: gates on ", gates.device(), " but c_prev on ",
              c_prev.device());
  dtype_code(gates.scalar_type());
  dtype_code(c_prev.scalar_type());
  TORCH_CHECK(supported_pair(gates.scalar_type(), c_prev.scalar_type()), "lstm_gates: unsupported dtype pair gates ",
              gates.scalar_type(), ", c_prev ", c_prev.scalar_type());
  const auto format = memory_format(channels_last);
  TORCH_CHECK(gates.is_contiguous(format) && c_prev.is_contiguous(format), "lstm_gates: gates and c_prev must be ",
              channels_last ? "channels_last" : "NCHW", "-contiguous");
  const bool peephole = w_ci.has_value();
  TORCH_CHECK(w_cf.has_value() == peephole && w_co.has_value() == peephole,
              "lstm_gates: give all three peephole weights or none");
  if (peephole) {
    const auto acc = c_prev.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    for (const at::Tensor* w : {&*w_ci, &*w_cf, &*w_co}) {
      TORCH_CHECK(w->dim() == 1 && w->size(0) == c_prev.size(1) && w->is_contiguous() && w->scalar_type() == acc &&
                      w->device() == c_prev.device(),
                  "lstm_gates: peephole weights must be contiguous (C,) ", acc, " on ", c_prev.device(), ", got ",
                  w->sizes(), " ", w->scalar_type(), " on ", w->device());
    }
  }
}

inline void check_grad(const std::optional<at::Tensor>& grad, const at::Tensor& c_prev, bool channels_last,
                       const char* name) {
  if (!grad.has_value()) return;
  TORCH_CHECK(grad->sizes() == c_prev.sizes() && grad->scalar_type() == c_prev.scalar_type() &&
                  grad->device() == c_prev.device() && grad->is_contiguous(memory_format(channels_last)),
              "lstm_gates: ", name, " must match c_prev in shape, dtype, device and layout, got ", grad->sizes(), " ",
              grad->scalar_type());
}

inline const void* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

}  // namespace lstm_gates
