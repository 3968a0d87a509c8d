// Host-side conversions between float32 and the 16-bit formats the nets use (inputs we upload, logits we read).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "transcribe_batch_native/bmrt_api.h"

namespace tbn {

inline size_t dtype_size(bm_data_type_t t) {
  switch (t) {
    case BM_FLOAT32: case BM_INT32: case BM_UINT32: return 4;
    case BM_FLOAT16: case BM_BFLOAT16: case BM_INT16: case BM_UINT16: return 2;
    case BM_INT8: case BM_UINT8: return 1;
    default: return 0;  // 4-bit types are never net inputs/outputs we touch
  }
}

inline std::string dtype_name(bm_data_type_t t) {
  switch (t) {
    case BM_FLOAT32: return "F32";
    case BM_FLOAT16: return "F16";
    case BM_INT8: return "INT8";
    case BM_UINT8: return "UINT8";
    case BM_INT16: return "INT16";
    case BM_UINT16: return "UINT16";
    case BM_INT32: return "INT32";
    case BM_UINT32: return "UINT32";
    case BM_BFLOAT16: return "BF16";
    case BM_INT4: return "INT4";
    case BM_UINT4: return "UINT4";
  }
  return "dtype" + std::to_string(static_cast<int>(t));
}

inline bool is_float(bm_data_type_t t) { return t == BM_FLOAT32 || t == BM_FLOAT16 || t == BM_BFLOAT16; }

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t f32_to_bf16(float f) {  // round to nearest even
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x007fffffu;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xffu);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x00800000u;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // may carry into the exponent: still correct
  return static_cast<uint16_t>(half);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    float v = static_cast<float>(mant) / 16777216.0f;  // mant * 2^-24
    return sign ? -v : v;
  }
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Write n floats into dst as dtype t (F32/F16/BF16).
inline void store_floats(bm_data_type_t t, const float *src, size_t n, void *dst) {
  if (t == BM_FLOAT32) { std::memcpy(dst, src, n * 4); return; }
  auto *d = static_cast<uint16_t *>(dst);
  if (t == BM_FLOAT16) for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
  else for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

inline float load_float(bm_data_type_t t, const void *src, size_t i) {
  if (t == BM_FLOAT32) return static_cast<const float *>(src)[i];
  uint16_t h = static_cast<const uint16_t *>(src)[i];
  return t == BM_FLOAT16 ? f16_to_f32(h) : bf16_to_f32(h);
}

}  // namespace tbn
