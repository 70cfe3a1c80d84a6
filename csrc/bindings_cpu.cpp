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
  m.def("gaussian_heatmaps_forward",
        [](int dtype, std::uintptr_t points, std::uintptr_t out, int64_t M, int64_t H, int64_t W, double inv_two_var,
           int nt) {
          fastlmk::cpu::gaussian_heatmaps_forward(dtype, cptr(points), mptr(out), M, H, W, inv_two_var, nt);
        },
        G());
  m.def("gaussian_heatmaps_backward",
        [](int dtype, std::uintptr_t grad_out, std::uintptr_t points, std::uintptr_t grad_points, int64_t M, int64_t H,
           int64_t W, double inv_two_var, int nt) {
          fastlmk::cpu::gaussian_heatmaps_backward(dtype, cptr(grad_out), cptr(points), mptr(grad_points), M, H, W,
                                                   inv_two_var, nt);
        },
        G());
  m.def("tps_warp_forward",
        [](int dtype, std::uintptr_t image, std::uintptr_t ctrl, std::uintptr_t coef, std::uintptr_t out, int64_t B,
           int64_t C, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border,
           int nt) {
          fastlmk::cpu::tps_warp_forward(dtype, cptr(image), cptr(ctrl), cptr(coef), mptr(out), B, C, Hin, Win, Hout,
                                         Wout, N, shared_ctrl, border, nt);
        },
        G());
  m.def("tps_warp_backward",
        [](int dtype, std::uintptr_t grad_out, std::uintptr_t image, std::uintptr_t ctrl, std::uintptr_t coef,
           std::uintptr_t grad_image, std::uintptr_t grad_coef, int64_t B, int64_t C, int64_t Hin, int64_t Win,
           int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border, int nt) {
          fastlmk::cpu::tps_warp_backward(dtype, cptr(grad_out), cptr(image), cptr(ctrl), cptr(coef), mptr(grad_image),
                                          mptr(grad_coef), B, C, Hin, Win, Hout, Wout, N, shared_ctrl, border, nt);
        },
        G());
  m.def("tps_transform_points_forward",
        [](int dtype, std::uintptr_t points, std::uintptr_t ctrl, std::uintptr_t coef, std::uintptr_t out, int64_t B,
           int64_t M, int64_t N, bool shared_ctrl, int nt) {
          fastlmk::cpu::tps_transform_points_forward(dtype, cptr(points), cptr(ctrl), cptr(coef), mptr(out), B, M, N,
                                                     shared_ctrl, nt);
        },
        G());
  m.def("tps_transform_points_backward",
        [](int dtype, std::uintptr_t grad_out, std::uintptr_t points, std::uintptr_t ctrl, std::uintptr_t coef,
           std::uintptr_t grad_points, std::uintptr_t grad_coef, int64_t B, int64_t M, int64_t N, bool shared_ctrl,
           int nt) {
          fastlmk::cpu::tps_transform_points_backward(dtype, cptr(grad_out), cptr(points), cptr(ctrl), cptr(coef),
                                                      mptr(grad_points), mptr(grad_coef), B, M, N, shared_ctrl, nt);
        },
        G());
}
