// Python bindings of the CPU kernels: plain functions over integer addresses (tensor.data_ptr()),
// so this module links against nothing of torch. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include "cpu/cpu_ops.h"
#include "fastlmk.h"

namespace py = pybind11;


namespace {
inline const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "fastlmk CPU kernels (framework-free; called by fastlmk's Python layer)";
  using G = py::call_guard<py::gil_scoped_release>;

  m.def("soft_argmax_forward",
        [](int dtype, std::uintptr_t logits, std::uintptr_t points, std::uintptr_t stats, int64_t M,
           int64_t H, int64_t W, double inv_t, bool marginal, int nt) {
          fastlmk::cpu::soft_argmax_forward(dtype, cptr(logits), mptr(points), mptr(stats), M, H, W, inv_t,
                                            marginal, nt);
        },
        G());
  m.def("soft_argmax_backward",
        [](int dtype, std::uintptr_t grad_points, std::uintptr_t logits, std::uintptr_t stats,
           std::uintptr_t points, std::uintptr_t grad_logits, int64_t M, int64_t H, int64_t W, double inv_t,
           bool marginal, int nt) {
          fastlmk::cpu::soft_argmax_backward(dtype, cptr(grad_points), cptr(logits), cptr(stats), cptr(points),
                                             mptr(grad_logits), M, H, W, inv_t, marginal, nt);
        },
        G());
}
