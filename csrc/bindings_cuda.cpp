// Python bindings of the CUDA kernels: plain functions over integer device addresses
// (tensor.data_ptr()) and the stream handle (torch.cuda.current_stream().cuda_stream), so this
// module links against nothing of torch (cudart is linked statically). Same function names and
// argument orders as bindings_cpu.cpp, except that the last argument is the stream instead of
// the thread count. The GIL is released while a launch is prepared and queued.
#include <pybind11/pybind11.h>

#include "cuda/cuda_ops.h"
#include "fastlmk.h"

namespace py = pybind11;

// The GPU code this module holds, e.g. "sm_80;sm_90;compute_90" (SASS per sm_XY, PTX per
// compute_XY), set by setup.py from the -gencode flags; fastlmk.ops.backends reads it to check,
// before a launch, that the module can run on the tensor's GPU. "" means unknown.
#ifndef FASTLMK_CUDA_TARGETS
#define FASTLMK_CUDA_TARGETS ""
#endif

namespace {
inline const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
inline void* stream_ptr(std::uintptr_t s) { return reinterpret_cast<void*>(s); }
}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastlmk CUDA kernels (framework-free; called by fastlmk's Python layer)";
  m.attr("cuda_targets") = FASTLMK_CUDA_TARGETS;
  using G = py::call_guard<py::gil_scoped_release>;
  namespace k = fastlmk::cuda;

  m.def("soft_argmax_forward",
        [](int dtype, std::uintptr_t logits, std::uintptr_t points, std::uintptr_t stats, int64_t M, int64_t H,
           int64_t W, double inv_t, bool marginal, std::uintptr_t stream) {
          k::soft_argmax_forward(dtype, cptr(logits), mptr(points), mptr(stats), M, H, W, inv_t, marginal,
                                 stream_ptr(stream));
        },
        G());
  m.def("soft_argmax_backward",
        [](int dtype, std::uintptr_t grad_points, std::uintptr_t logits, std::uintptr_t stats, std::uintptr_t points,
           std::uintptr_t grad_logits, int64_t M, int64_t H, int64_t W, double inv_t, bool marginal,
           std::uintptr_t stream) {
          k::soft_argmax_backward(dtype, cptr(grad_points), cptr(logits), cptr(stats), cptr(points), mptr(grad_logits),
                                  M, H, W, inv_t, marginal, stream_ptr(stream));
        },
        G());
  m.def("gaussian_heatmaps_forward",
        [](int dtype, std::uintptr_t points, std::uintptr_t out, int64_t M, int64_t H, int64_t W, double inv_two_var,
           std::uintptr_t stream) {
          k::gaussian_heatmaps_forward(dtype, cptr(points), mptr(out), M, H, W, inv_two_var, stream_ptr(stream));
        },
        G());
  m.def("gaussian_heatmaps_backward",
        [](int dtype, std::uintptr_t grad_out, std::uintptr_t points, std::uintptr_t grad_points, int64_t M, int64_t H,
           int64_t W, double inv_two_var, std::uintptr_t stream) {
          k::gaussian_heatmaps_backward(dtype, cptr(grad_out), cptr(points), mptr(grad_points), M, H, W, inv_two_var,
                                        stream_ptr(stream));
        },
        G());
  m.def("tps_warp_forward",
        [](int dtype, std::uintptr_t image, std::uintptr_t ctrl, std::uintptr_t coef, std::uintptr_t out, int64_t B,
           int64_t C, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border,
           std::uintptr_t stream) {
          k::tps_warp_forward(dtype, cptr(image), cptr(ctrl), cptr(coef), mptr(out), B, C, Hin, Win, Hout, Wout, N,
                              shared_ctrl, border, stream_ptr(stream));
        },
        G());
  m.def("tps_warp_backward",
        [](int dtype, std::uintptr_t grad_out, std::uintptr_t image, std::uintptr_t ctrl, std::uintptr_t coef,
           std::uintptr_t grad_image, std::uintptr_t grad_coef, int64_t B, int64_t C, int64_t Hin, int64_t Win,
           int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border, std::uintptr_t stream) {
          // a null address (0) means "gradient not wanted"
          k::tps_warp_backward(dtype, cptr(grad_out), cptr(image), cptr(ctrl), cptr(coef), mptr(grad_image),
                               mptr(grad_coef), B, C, Hin, Win, Hout, Wout, N, shared_ctrl, border,
                               stream_ptr(stream));
        },
        G());
  m.def("tps_transform_points_forward",
        [](int dtype, std::uintptr_t points, std::uintptr_t ctrl, std::uintptr_t coef, std::uintptr_t out, int64_t B,
           int64_t M, int64_t N, bool shared_ctrl, std::uintptr_t stream) {
          k::tps_transform_points_forward(dtype, cptr(points), cptr(ctrl), cptr(coef), mptr(out), B, M, N, shared_ctrl,
                                          stream_ptr(stream));
        },
        G());
  m.def("tps_transform_points_backward",
        [](int dtype, std::uintptr_t grad_out, std::uintptr_t points, std::uintptr_t ctrl, std::uintptr_t coef,
           std::uintptr_t grad_points, std::uintptr_t grad_coef, int64_t B, int64_t M, int64_t N, bool shared_ctrl,
           std::uintptr_t stream) {
          k::tps_transform_points_backward(dtype, cptr(grad_out), cptr(points), cptr(ctrl), cptr(coef),
                                           mptr(grad_points), mptr(grad_coef), B, M, N, shared_ctrl,
                                           stream_ptr(stream));
        },
        G());
}
