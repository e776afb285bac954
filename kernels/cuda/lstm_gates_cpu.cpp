// lstm_gates "cpu twin": the CUDA kernels' per-element math (lstm_gates.cuh) and indexing, compiled for the CPU
// by g++, so that tests without a GPU check the exact code the CUDA kernels run against lstm_gates_ref.
// A test/debug path (backend "cpu_twin"), not tuned for speed. Same interface as lstm_gates_cuda.cpp.
#include <ATen/Parallel.h>

#include "lstm_gates.cuh"
#include "lstm_gates_torch.h"

namespace lstm_gates {
namespace {

// Elements per parallel_for task: enough to amortise the task, small enough to spread a 64x64 map.
constexpr int64_t kGrain = 4096;

template <typename acc_t, typename index_t>
Peephole<acc_t> peephole_at(const acc_t* w_ci, const acc_t* w_cf, const acc_t* w_co, index_t n, index_t channels,
                            index_t spatial, bool channels_last) {
  if (w_ci == nullptr) return {acc_t(0), acc_t(0), acc_t(0)};
  const index_t c = channel_of(n, channels, spatial, channels_last);
  return {w_ci[c], w_cf[c], w_co[c]};
}

template <typename acc_t>
const acc_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<acc_t>() : nullptr;
}

template <typename gate_t, typename state_t, typename index_t>
void forward_loop(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                  const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co, at::Tensor& h_next,
                  at::Tensor& c_next, bool channels_last) {
  using acc_t = std::conditional_t<std::is_same_v<state_t, double>, double, float>;
  const gate_t* g = gates.data_ptr<gate_t>();
  const state_t* cp = c_prev.data_ptr<state_t>();
  const acc_t *wi = ptr_or_null<acc_t>(w_ci), *wf = ptr_or_null<acc_t>(w_cf), *wo = ptr_or_null<acc_t>(w_co);
  state_t* h = h_next.data_ptr<state_t>();
  state_t* c = c_next.data_ptr<state_t>();
  const index_t channels = c_prev.size(1), spatial = c_prev.size(2) * c_prev.size(3);
  at::parallel_for(0, c_prev.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (index_t n = begin; n < end; ++n) {
      acc_t gate[4];
      for (int k = 0; k < 4; ++k) {
        gate[k] = static_cast<acc_t>(g[gate_offset(n, k, channels, spatial, channels_last)]);
      }
      const StepOut<acc_t> out = forward<acc_t>(gate[0], gate[1], gate[2], gate[3], static_cast<acc_t>(cp[n]),
                                                peephole_at(wi, wf, wo, n, channels, spatial, channels_last));
      h[n] = static_cast<state_t>(out.h_next);
      c[n] = static_cast<state_t>(out.c_next);
    }
  });
}

template <typename gate_t, typename state_t, typename index_t>
void backward_loop(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                   const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co,
                   const std::optional<at::Tensor>& grad_h, const std::optional<at::Tensor>& grad_c,
                   at::Tensor& grad_gates, at::Tensor& grad_c_prev, bool channels_last) {
  using acc_t = std::conditional_t<std::is_same_v<state_t, double>, double, float>;
  const gate_t* g = gates.data_ptr<gate_t>();
  const state_t* cp = c_prev.data_ptr<state_t>();
  const acc_t *wi = ptr_or_null<acc_t>(w_ci), *wf = ptr_or_null<acc_t>(w_cf), *wo = ptr_or_null<acc_t>(w_co);
  const state_t* dh = grad_h.has_value() ? grad_h->data_ptr<state_t>() : nullptr;
  const state_t* dc = grad_c.has_value() ? grad_c->data_ptr<state_t>() : nullptr;
  gate_t* dg = grad_gates.data_ptr<gate_t>();
  state_t* dcp = grad_c_prev.data_ptr<state_t>();
  const index_t channels = c_prev.size(1), spatial = c_prev.size(2) * c_prev.size(3);
  at::parallel_for(0, c_prev.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (index_t n = begin; n < end; ++n) {
      index_t offset[4];
      acc_t gate[4];
      for (int k = 0; k < 4; ++k) {
        offset[k] = gate_offset(n, k, channels, spatial, channels_last);
        gate[k] = static_cast<acc_t>(g[offset[k]]);
      }
      const acc_t grad_h_n = dh != nullptr ? static_cast<acc_t>(dh[n]) : acc_t(0);
      const acc_t grad_c_n = dc != nullptr ? static_cast<acc_t>(dc[n]) : acc_t(0);
      const StepGrad<acc_t> d = backward<acc_t>(gate[0], gate[1], gate[2], gate[3], static_cast<acc_t>(cp[n]),
                                                peephole_at(wi, wf, wo, n, channels, spatial, channels_last),
                                                grad_h_n, grad_c_n);
      dg[offset[0]] = static_cast<gate_t>(d.d_i);
      dg[offset[1]] = static_cast<gate_t>(d.d_f);
      dg[offset[2]] = static_cast<gate_t>(d.d_o);
      dg[offset[3]] = static_cast<gate_t>(d.d_g);
      dcp[n] = static_cast<state_t>(d.d_c_prev);
    }
  });
}

// Calls f with a value of the index type the CUDA launchers would pick (int32_index), so the twin runs the same
// instantiation of the indexing.
template <typename F>
void with_index_type(int64_t numel, F&& f) {
  if (int32_index(numel)) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// Runs `body` with gate_t / state_t bound to the storage types of a supported (gate, state) dtype pair.
#define LSTM_GATES_CPU_CASE(GATE, STATE, GATE_T, STATE_T, ...) \
  if (gate == GATE && state == STATE) {                         \
    using gate_t = GATE_T;                                      \
    using state_t = STATE_T;                                    \
    __VA_ARGS__;                                                \
    return;                                                     \
  }
#define LSTM_GATES_CPU_DISPATCH(GATE_DTYPE, STATE_DTYPE, ...)                                   \
  do {                                                                                          \
    const at::ScalarType gate = GATE_DTYPE, state = STATE_DTYPE;                                \
    LSTM_GATES_CPU_CASE(at::kFloat, at::kFloat, float, float, __VA_ARGS__)                      \
    LSTM_GATES_CPU_CASE(at::kDouble, at::kDouble, double, double, __VA_ARGS__)                  \
    LSTM_GATES_CPU_CASE(at::kHalf, at::kHalf, at::Half, at::Half, __VA_ARGS__)                  \
    LSTM_GATES_CPU_CASE(at::kBFloat16, at::kBFloat16, at::BFloat16, at::BFloat16, __VA_ARGS__)  \
    LSTM_GATES_CPU_CASE(at::kHalf, at::kFloat, at::Half, float, __VA_ARGS__)                    \
    LSTM_GATES_CPU_CASE(at::kBFloat16, at::kFloat, at::BFloat16, float, __VA_ARGS__)            \
    TORCH_CHECK(false, "lstm_gates: unsupported dtype pair gates ", gate, ", c_prev ", state);  \
  } while (0)

void run_forward(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                 const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co, at::Tensor& h_next,
                 at::Tensor& c_next, bool channels_last) {
  LSTM_GATES_CPU_DISPATCH(gates.scalar_type(), c_prev.scalar_type(),
                          with_index_type(c_prev.numel(), [&](auto index) {
                            forward_loop<gate_t, state_t, decltype(index)>(gates, c_prev, w_ci, w_cf, w_co, h_next,
                                                                           c_next, channels_last);
                          }));
}

void run_backward(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                  const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co,
                  const std::optional<at::Tensor>& grad_h, const std::optional<at::Tensor>& grad_c,
                  at::Tensor& grad_gates, at::Tensor& grad_c_prev, bool channels_last) {
  LSTM_GATES_CPU_DISPATCH(gates.scalar_type(), c_prev.scalar_type(),
                          with_index_type(c_prev.numel(), [&](auto index) {
                            backward_loop<gate_t, state_t, decltype(index)>(gates, c_prev, w_ci, w_cf, w_co, grad_h,
                                                                            grad_c, grad_gates, grad_c_prev,
                                                                            channels_last);
                          }));
}

std::vector<at::Tensor> forward_op(const at::Tensor& gates, const at::Tensor& c_prev,
                                   const std::optional<at::Tensor>& w_ci, const std::optional<at::Tensor>& w_cf,
                                   const std::optional<at::Tensor>& w_co, bool channels_last) {
  check_inputs(gates, c_prev, w_ci, w_cf, w_co, channels_last);
  TORCH_CHECK(gates.is_cpu(), "lstm_gates (cpu_twin): tensors must be on the CPU, got ", gates.device());
  auto h_next = at::empty_like(c_prev, memory_format(channels_last));
  auto c_next = at::empty_like(c_prev, memory_format(channels_last));
  run_forward(gates, c_prev, w_ci, w_cf, w_co, h_next, c_next, channels_last);
  return {h_next, c_next};
}

std::vector<at::Tensor> backward_op(const at::Tensor& gates, const at::Tensor& c_prev,
                                    const std::optional<at::Tensor>& w_ci, const std::optional<at::Tensor>& w_cf,
                                    const std::optional<at::Tensor>& w_co, const std::optional<at::Tensor>& grad_h,
                                    const std::optional<at::Tensor>& grad_c, bool channels_last) {
  check_inputs(gates, c_prev, w_ci, w_cf, w_co, channels_last);
  check_grad(grad_h, c_prev, channels_last, "grad_h");
  check_grad(grad_c, c_prev, channels_last, "grad_c");
  TORCH_CHECK(gates.is_cpu(), "lstm_gates (cpu_twin): tensors must be on the CPU, got ", gates.device());
  auto grad_gates = at::empty_like(gates, memory_format(channels_last));
  auto grad_c_prev = at::empty_like(c_prev, memory_format(channels_last));
  run_backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, grad_gates, grad_c_prev, channels_last);
  return {grad_gates, grad_c_prev};
}

}  // namespace
}  // namespace lstm_gates

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lstm_gates::forward_op,
        "lstm_gates forward (CPU twin of the CUDA math) -> [h_next, c_next]");
  m.def("backward", &lstm_gates::backward_op,
        "lstm_gates backward (CPU twin of the CUDA math) -> [grad_gates, grad_c_prev]");
}
