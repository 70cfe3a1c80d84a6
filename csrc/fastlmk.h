// Shared definitions of fastlmk's framework-free kernels (CPU and CUDA).
//
// Conventions (see README "Conventions"):
//  * Tensors are passed as raw pointers to contiguous row-major buffers; the Python layer
//    validates, makes contiguous and allocates.
//  * Coordinates are (x, y) in [-1, 1]; -1 and +1 are the centres of the border pixels
//    (align_corners=True). Pixel (i, j) of an H x W grid sits at
//    x = -1 + 2 j / (W - 1), y = -1 + 2 i / (H - 1) (0 when that size is 1).
//  * "Accumulation type" acc_t: double for float64 data, float otherwise. Side buffers
//    (softmax stats, TPS control points and coefficients) are stored in acc_t.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastlmk {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "unknown";
  }
}

[[noreturn]] inline void unsupported_dtype(const char* op, int dtype) {
  throw std::invalid_argument(std::string("fastlmk.") + op + ": unsupported dtype " + dtype_name(dtype));
}

}  // namespace fastlmk
