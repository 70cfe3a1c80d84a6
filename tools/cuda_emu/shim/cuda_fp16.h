// CPU emulation (tools/cuda_emu): __half with the device layout (IEEE binary16 bits).
#pragma once
#include <cstdint>
#include <cstring>
struct __half {
  uint16_t bits;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return float(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // round to nearest even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
