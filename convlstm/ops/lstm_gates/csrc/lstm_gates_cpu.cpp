// lstm_gates "cpu twin": the CUDA kernels' thread bodies (lstm_gates.cuh: per-element math, indexing, the
// grid's cover of the elements), compiled for the CPU by g++ and run for every thread of the grid the CUDA
// launchers would launch, so that tests without a GPU check the code the CUDA kernels run against lstm_gates_ref.
// A test/debug path (backend "cpu_twin"), not tuned for speed. Same interface as lstm_gates_cuda.cpp.
#include <ATen/Parallel.h>

#include "lstm_gates.cuh"
#include "lstm_gates_torch.h"

namespace lstm_gates {
namespace {

// Storage <-> math type, as lstm_gates.cu's Io does with CUDA's half types: widen to float (double for double),
// round back to nearest even (at::Half and at::BFloat16 from float do).
template <typename storage_t>
struct CastIo {
  using math_t = std::conditional_t<std::is_same_v<storage_t, double>, double, float>;
  static math_t load(storage_t x) { return static_cast<math_t>(x); }
  template <typename acc_t>
  static storage_t store(acc_t x) { return static_cast<storage_t>(static_cast<math_t>(x)); }
};

// Walks the CUDA launch's grid (num_blocks(numel) blocks of kThreads threads, or `grid` blocks when it is not 0)
// and runs `thread_body(block, thread, grid)` for each thread, blocks spread over the CPU's threads.
template <typename index_t, typename F>
void for_each_cuda_thread(int64_t numel, int64_t grid, F&& thread_body) {
  if (grid == 0) grid = num_blocks(numel);
  at::parallel_for(0, grid, /*grain_size=*/4, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      for (int thread = 0; thread < kThreads; ++thread) {
        thread_body(index_t(block), index_t(thread), index_t(grid));
      }
    }
  });
}

template <typename acc_t>
const acc_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<acc_t>() : nullptr;
}

template <typename index_t>
Index<index_t> index_of(const at::Tensor& c_prev, bool channels_last, int64_t o_slot) {
  return Index<index_t>(c_prev.numel(), c_prev.size(1), c_prev.size(2) * c_prev.size(3), channels_last,
                        static_cast<int>(o_slot));
}

template <typename gate_t, typename state_t, typename index_t>
void forward_loop(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                  const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co, at::Tensor& h_next,
                  at::Tensor& c_next, bool channels_last, int64_t o_slot, int64_t grid) {
  using acc_t = typename CastIo<state_t>::math_t;
  const gate_t* g = gates.data_ptr<gate_t>();
  const state_t* cp = c_prev.data_ptr<state_t>();
  const acc_t *wi = ptr_or_null<acc_t>(w_ci), *wf = ptr_or_null<acc_t>(w_cf), *wo = ptr_or_null<acc_t>(w_co);
  state_t* h = h_next.data_ptr<state_t>();
  state_t* c = c_next.data_ptr<state_t>();
  const Index<index_t> index = index_of<index_t>(c_prev, channels_last, o_slot);
  for_each_cuda_thread<index_t>(c_prev.numel(), grid, [&](index_t block, index_t thread, index_t grid) {
    forward_thread<CastIo>(g, cp, wi, wf, wo, h, c, index, block, thread, grid);
  });
}

template <typename gate_t, typename state_t, typename index_t>
void backward_loop(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                   const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co,
                   const std::optional<at::Tensor>& grad_h, const std::optional<at::Tensor>& grad_c,
                   at::Tensor& grad_gates, at::Tensor& grad_c_prev, bool channels_last, int64_t o_slot,
                   int64_t grid) {
  using acc_t = typename CastIo<state_t>::math_t;
  const gate_t* g = gates.data_ptr<gate_t>();
  const state_t* cp = c_prev.data_ptr<state_t>();
  const acc_t *wi = ptr_or_null<acc_t>(w_ci), *wf = ptr_or_null<acc_t>(w_cf), *wo = ptr_or_null<acc_t>(w_co);
  const state_t* dh = grad_h.has_value() ? grad_h->data_ptr<state_t>() : nullptr;
  const state_t* dc = grad_c.has_value() ? grad_c->data_ptr<state_t>() : nullptr;
  gate_t* dg = grad_gates.data_ptr<gate_t>();
  state_t* dcp = grad_c_prev.data_ptr<state_t>();
  const Index<index_t> index = index_of<index_t>(c_prev, channels_last, o_slot);
  for_each_cuda_thread<index_t>(c_prev.numel(), grid, [&](index_t block, index_t thread, index_t grid) {
    backward_thread<CastIo>(g, cp, wi, wf, wo, dh, dc, dg, dcp, index, block, thread, grid);
  });
}

// Calls f with a value of the index type the CUDA launchers would pick (int32_index), so the twin runs the same
// instantiation of the indexing; int64_t when `int64_index` (tests: the instantiation only huge inputs reach).
template <typename F>
void with_index_type(int64_t numel, bool int64_index, F&& f) {
  if (int32_index(numel) && !int64_index) {
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
                 at::Tensor& c_next, bool channels_last, int64_t o_slot, int64_t grid, bool int64_index) {
  LSTM_GATES_CPU_DISPATCH(gates.scalar_type(), c_prev.scalar_type(),
                          with_index_type(c_prev.numel(), int64_index, [&](auto index) {
                            forward_loop<gate_t, state_t, decltype(index)>(gates, c_prev, w_ci, w_cf, w_co, h_next,
                                                                           c_next, channels_last, o_slot, grid);
                          }));
}

void run_backward(const at::Tensor& gates, const at::Tensor& c_prev, const std::optional<at::Tensor>& w_ci,
                  const std::optional<at::Tensor>& w_cf, const std::optional<at::Tensor>& w_co,
                  const std::optional<at::Tensor>& grad_h, const std::optional<at::Tensor>& grad_c,
                  at::Tensor& grad_gates, at::Tensor& grad_c_prev, bool channels_last, int64_t o_slot,
                  int64_t grid, bool int64_index) {
  LSTM_GATES_CPU_DISPATCH(gates.scalar_type(), c_prev.scalar_type(),
                          with_index_type(c_prev.numel(), int64_index, [&](auto index) {
                            backward_loop<gate_t, state_t, decltype(index)>(gates, c_prev, w_ci, w_cf, w_co, grad_h,
                                                                            grad_c, grad_gates, grad_c_prev,
                                                                            channels_last, o_slot, grid);
                          }));
}

// Test knobs for what on the GPU only inputs of more than kMaxStride elements (1 GiB of fp32 c_prev) reach:
// `grid`, 0 for the grid the CUDA launcher would launch or 1..kMaxBlocks blocks (the grid-stride loop), and
// `int64_index` (the int64_t instantiation of the indexing).
void check_grid(int64_t grid) {
  TORCH_CHECK(grid >= 0 && grid <= kMaxBlocks, "lstm_gates (cpu_twin): grid must be 0 (the CUDA launcher's) or 1..",
              kMaxBlocks, " blocks, got ", grid);
}

std::vector<at::Tensor> forward_op(const at::Tensor& gates, const at::Tensor& c_prev,
                                   const std::optional<at::Tensor>& w_ci, const std::optional<at::Tensor>& w_cf,
                                   const std::optional<at::Tensor>& w_co, bool channels_last, int64_t o_slot,
                                   int64_t grid, bool int64_index) {
  check_inputs(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot);
  check_grid(grid);
  TORCH_CHECK(gates.is_cpu(), "lstm_gates (cpu_twin): tensors must be on the CPU, got ", gates.device());
  auto h_next = at::empty_like(c_prev, memory_format(channels_last));
  auto c_next = at::empty_like(c_prev, memory_format(channels_last));
  run_forward(gates, c_prev, w_ci, w_cf, w_co, h_next, c_next, channels_last, o_slot, grid, int64_index);
  return {h_next, c_next};
}

std::vector<at::Tensor> backward_op(const at::Tensor& gates, const at::Tensor& c_prev,
                                    const std::optional<at::Tensor>& w_ci, const std::optional<at::Tensor>& w_cf,
                                    const std::optional<at::Tensor>& w_co, const std::optional<at::Tensor>& grad_h,
                                    const std::optional<at::Tensor>& grad_c, bool channels_last, int64_t o_slot,
                                    int64_t grid, bool int64_index) {
  check_inputs(gates, c_prev, w_ci, w_cf, w_co, channels_last, o_slot);
  check_grid(grid);
  check_grad(grad_h, c_prev, channels_last, "grad_h");
  check_grad(grad_c, c_prev, channels_last, "grad_c");
  TORCH_CHECK(gates.is_cpu(), "lstm_gates (cpu_twin): tensors must be on the CPU, got ", gates.device());
  auto grad_gates = at::empty_like(gates, memory_format(channels_last));
  auto grad_c_prev = at::empty_like(c_prev, memory_format(channels_last));
  run_backward(gates, c_prev, w_ci, w_cf, w_co, grad_h, grad_c, grad_gates, grad_c_prev, channels_last, o_slot,
               grid, int64_index);
  return {grad_gates, grad_c_prev};
}

}  // namespace
}  // namespace lstm_gates

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pybind11::arg;
  m.def("forward", &lstm_gates::forward_op, "lstm_gates forward (CPU twin of the CUDA kernel) -> [h_next, c_next]",
        arg("gates"), arg("c_prev"), arg("w_ci"), arg("w_cf"), arg("w_co"), arg("channels_last"), arg("o_slot"),
        arg("grid") = 0, arg("int64_index") = false);
  m.def("backward", &lstm_gates::backward_op,
        "lstm_gates backward (CPU twin of the CUDA kernel) -> [grad_gates, grad_c_prev]", arg("gates"),
        arg("c_prev"), arg("w_ci"), arg("w_cf"), arg("w_co"), arg("grad_h"), arg("grad_c"), arg("channels_last"),
        arg("o_slot"), arg("grid") = 0, arg("int64_index") = false);
}
