// CPU emulation (tools/cuda_emu): __nv_bfloat16 with the device layout (top 16 bits of a float).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  __nv_bfloat16 h;
  if (std::isnan(v)) {
    h.bits = 0x7fc0;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    h.bits = uint16_t(u >> 16);
  }
  return h;
}
