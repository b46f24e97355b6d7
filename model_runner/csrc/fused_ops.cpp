// Fused elementwise ops of a Llama decoder layer on CPU: one pass over the data where PyTorch
// runs 3-12 small ops (each with its own dispatch and temporary). At decode batch sizes these ops
// are tiny, so their per-op cost, not their arithmetic, is what they take from a step.
//
// Each op rounds to the activation dtype at the points where the PyTorch path it replaces does
// (llama.py, rotary.py): in bf16 the results match that path up to fp32 reordering of sums.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace skipdecode {
namespace {

// Rows per parallel task (at least 4096 elements). Decode-sized inputs split across threads too:
// measured inside a decode step on the 2-core machine, one thread ran these ops 3-5x slower than
// in isolation (its sibling thread spins after each oneDNN matmul), two threads near isolation
// speed.
int64_t grain_rows(int64_t width) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, width));
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) > 0, name, " must have a non-empty last dimension");
}

// out = weight * round(x * rsqrt(mean(x^2) + eps)), statistics in fp32; with `add`, x is first
// round(x + add), which is also written to `sum`.
template <typename T>
void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ add,
                     const T* __restrict__ weight, T* __restrict__ sum, T* __restrict__ out,
                     int64_t rows, int64_t width, float eps) {
  at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
    std::vector<float> row(width);
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ src = x + r * width;
      float* __restrict__ values = row.data();
      float squares = 0.0f;
      if (add != nullptr) {
        const T* __restrict__ other = add + r * width;
        T* __restrict__ dst = sum + r * width;
        for (int64_t i = 0; i < width; ++i) {
          values[i] = round_to<T>(to_float(src[i]) + to_float(other[i]));
        }
        for (int64_t i = 0; i < width; ++i) dst[i] = static_cast<T>(values[i]);  // exact
      } else {
        load_row(src, values, width);
      }
      for (int64_t i = 0; i < width; ++i) squares += values[i] * values[i];
      const float inv = 1.0f / std::sqrt(squares / static_cast<float>(width) + eps);
      T* __restrict__ dst = out + r * width;
      for (int64_t i = 0; i < width; ++i) {
        dst[i] = static_cast<T>(to_float(weight[i]) * round_to<T>(values[i] * inv));
      }
    }
  });
}

void check_norm(const at::Tensor& x, const at::Tensor& weight) {
  check_rows(x, "x");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1),
              "weight must be 1-D with x's last dimension");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "x and weight dtypes differ");
}

// out = norm(x) or, with a defined `residual`, sum = x + residual and out = norm(sum).
void run_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
              double eps, at::Tensor& sum, at::Tensor& out) {
  const int64_t width = x.size(-1), rows = x.numel() / width;
  const bool add = residual.defined();
  if (x.scalar_type() == at::kFloat) {
    rms_norm_kernel<float>(x.data_ptr<float>(), add ? residual.data_ptr<float>() : nullptr,
                           weight.data_ptr<float>(), add ? sum.data_ptr<float>() : nullptr,
                           out.data_ptr<float>(), rows, width, static_cast<float>(eps));
  } else {
    using BF = at::BFloat16;
    rms_norm_kernel<BF>(x.data_ptr<BF>(), add ? residual.data_ptr<BF>() : nullptr,
                        weight.data_ptr<BF>(), add ? sum.data_ptr<BF>() : nullptr,
                        out.data_ptr<BF>(), rows, width, static_cast<float>(eps));
  }
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  at::Tensor none, out = at::empty_like(x);
  run_norm(x, none, weight, eps, none, out);
  return out;
}

std::vector<at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                     const at::Tensor& weight, double eps) {
  check_norm(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.is_contiguous(),
              "residual must be contiguous with x's shape");
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "x and residual dtypes differ");
  auto sum = at::empty_like(x), out = at::empty_like(x);
  run_norm(x, residual, weight, eps, sum, out);
  return {sum, out};
}

namespace {

template <typename T>
void silu_and_mul_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows,
                         int64_t width) {
  at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ gate = in + r * 2 * width;
      const T* __restrict__ up = gate + width;
      T* __restrict__ dst = out + r * width;
      for (int64_t i = 0; i < width; ++i) {
        const float g = to_float(gate[i]);
        dst[i] = static_cast<T>(round_to<T>(g / (1.0f + std::exp(-g))) * to_float(up[i]));
      }
    }
  });
}

}  // namespace

at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  check_rows(gate_up, "gate_up");
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.size(-1) % 2 == 0,
              "gate_up must be contiguous with an even last dimension");
  const int64_t width = gate_up.size(-1) / 2, rows = gate_up.numel() / (2 * width);
  auto sizes = gate_up.sizes().vec();
  sizes.back() = width;
  auto out = at::empty(sizes, gate_up.options());
  if (gate_up.scalar_type() == at::kFloat) {
    silu_and_mul_kernel<float>(gate_up.data_ptr<float>(), out.data_ptr<float>(), rows, width);
  } else {
    using BF = at::BFloat16;
    silu_and_mul_kernel<BF>(gate_up.data_ptr<BF>(), out.data_ptr<BF>(), rows, width);
  }
  return out;
}

namespace {

// x * cos + rotate_half(x) * sin for one head (rotate_half: [-x2, x1] of the halves [x1, x2]),
// each product and the sum rounded to T as three PyTorch ops would.
template <typename T>
inline void rotate(const T* x, const T* cos, const T* sin, T* out, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < dim; ++i) {
    const float rotated = i < half ? -to_float(x[i + half]) : to_float(x[i - half]);
    const float a = round_to<T>(to_float(x[i]) * to_float(cos[i]));
    const float b = round_to<T>(rotated * to_float(sin[i]));
    out[i] = static_cast<T>(a + b);
  }
}

template <typename T>
void rotary_store_kernel(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const at::Tensor& positions, const at::Tensor& cos,
                         const at::Tensor& sin, at::Tensor& key_cache, at::Tensor& value_cache,
                         const at::Tensor& slots, at::Tensor& out) {
  const int64_t rows = query.size(0), dim = cos.size(1), max_position = cos.size(0);
  const int64_t heads = query.size(1) / dim, kv_heads = key_cache.size(0);
  const int64_t num_slots = key_cache.size(1);
  const int64_t q_stride = query.stride(0), k_stride = key.stride(0), v_stride = value.stride(0);
  const T *q = query.data_ptr<T>(), *k = key.data_ptr<T>(), *v = value.data_ptr<T>();
  const T *cos_data = cos.data_ptr<T>(), *sin_data = sin.data_ptr<T>();
  const int64_t *position_data = positions.data_ptr<int64_t>(), *slot_data = slots.data_ptr<int64_t>();
  T *k_cache = key_cache.data_ptr<T>(), *v_cache = value_cache.data_ptr<T>();
  T* out_data = out.data_ptr<T>();
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, rows, grain_rows((heads + 2 * kv_heads) * dim), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t position = position_data[r], slot = slot_data[r];
      if (position < 0 || position >= max_position || slot < 0 || slot >= num_slots) {
        out_of_range = true;
        continue;
      }
      const T* c = cos_data + position * dim;
      const T* s = sin_data + position * dim;
      for (int64_t h = 0; h < heads; ++h) {
        rotate(q + r * q_stride + h * dim, c, s, out_data + (r * heads + h) * dim, dim);
      }
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t at = (h * num_slots + slot) * dim;
        rotate(k + r * k_stride + h * dim, c, s, k_cache + at, dim);
        std::copy(v + r * v_stride + h * dim, v + r * v_stride + (h + 1) * dim, v_cache + at);
      }
    }
  });
  TORCH_CHECK(!out_of_range, "rotary_store: a position or slot is out of range");
}

}  // namespace

at::Tensor rotary_store(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                        const at::Tensor& positions, const at::Tensor& cos,
                        const at::Tensor& sin, at::Tensor& key_cache, at::Tensor& value_cache,
                        const at::Tensor& slots) {
  check_rows(query, "query");
  const auto dtype = query.scalar_type();
  for (const at::Tensor& t : {key, value, cos, sin, key_cache, value_cache}) {
    TORCH_CHECK(t.scalar_type() == dtype, "rotary_store: all float inputs need one dtype");
  }
  TORCH_CHECK(query.dim() == 2 && key.dim() == 2 && value.dim() == 2,
              "query, key and value must be [rows, heads * head_dim]");
  TORCH_CHECK(query.stride(1) == 1 && key.stride(1) == 1 && value.stride(1) == 1,
              "query, key and value rows must be contiguous");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.is_contiguous() &&
                  sin.is_contiguous(),
              "cos and sin must be contiguous [max_position, head_dim] tables");
  TORCH_CHECK(key_cache.dim() == 3 && key_cache.sizes() == value_cache.sizes() &&
                  key_cache.is_contiguous() && value_cache.is_contiguous(),
              "key and value caches must be contiguous [kv_heads, slots, head_dim]");
  const int64_t dim = cos.size(1), rows = query.size(0);
  TORCH_CHECK(dim % 2 == 0 && key_cache.size(2) == dim, "head_dim differs or is odd");
  TORCH_CHECK(query.size(1) % dim == 0 && key.size(1) == key_cache.size(0) * dim &&
                  value.size(1) == key.size(1),
              "query, key or value width does not match the head layout");
  TORCH_CHECK(key.size(0) == rows && value.size(0) == rows && positions.numel() == rows &&
                  slots.numel() == rows,
              "one key, value, position and slot per query row");
  TORCH_CHECK(positions.scalar_type() == at::kLong && slots.scalar_type() == at::kLong &&
                  positions.is_contiguous() && slots.is_contiguous(),
              "positions and slots must be contiguous int64");
  auto out = at::empty({rows, query.size(1) / dim, dim}, query.options());
  if (dtype == at::kFloat) {
    rotary_store_kernel<float>(query, key, value, positions, cos, sin, key_cache, value_cache,
                               slots, out);
  } else {
    rotary_store_kernel<at::BFloat16>(query, key, value, positions, cos, sin, key_cache,
                                      value_cache, slots, out);
  }
  return out;
}

}  // namespace skipdecode
