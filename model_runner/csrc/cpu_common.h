// Scalar helpers shared by the CPU kernels: bf16 <-> fp32 and the module's function list.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>

namespace skipdecode {

inline float to_float(float x) { return x; }

inline float to_float(at::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Round a float to T and back: what storing an intermediate result in the activation dtype does
// (PyTorch rounds after every bf16 op; the fused kernels round at the same points).
template <typename T>
inline float round_to(float x) {
  return to_float(static_cast<T>(x));
}

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& rows,
                            const at::Tensor& tables, const at::Tensor& lengths,
                            int64_t block_size, double scale);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::vector<at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                     const at::Tensor& weight, double eps);
at::Tensor silu_and_mul(const at::Tensor& gate_up);
at::Tensor rotary_store(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                        const at::Tensor& positions, const at::Tensor& cos,
                        const at::Tensor& sin, at::Tensor& key_cache, at::Tensor& value_cache,
                        const at::Tensor& slots);

}  // namespace skipdecode
