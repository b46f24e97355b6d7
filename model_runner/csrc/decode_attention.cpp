// Paged decode attention on CPU: one query per sequence, keys and values read in place from the
// head-major KV pool through the sequence's block table (no gathered copy), softmax in fp32.
//
// query:   [rows, heads, head_dim]            (the layer's running rows)
// cache:   [kv_heads, num_slots, head_dim]    (key and value pools, slot = block * bs + offset)
// rows:    [S] query row of each sequence;  tables: [S, max_blocks] block ids;
// lengths: [S] keys each sequence attends to (its positions 0 .. length - 1).
// Returns  [S, heads * head_dim].
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float to_float(float x) { return x; }

inline float to_float(at::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

// DIM > 0: head_dim known at compile time (fully unrolled, vectorised loops); 0: any head_dim.
template <typename T, int64_t DIM>
void decode_attention_kernel(const at::Tensor& query, const at::Tensor& key_cache,
                             const at::Tensor& value_cache, const at::Tensor& rows,
                             const at::Tensor& tables, const at::Tensor& lengths,
                             int64_t block_size, double scale, at::Tensor& out) {
  const int64_t num_seqs = rows.size(0), heads = query.size(1);
  const int64_t dim = DIM > 0 ? DIM : query.size(2);
  const int64_t kv_heads = key_cache.size(0), num_slots = key_cache.size(1);
  const int64_t group = heads / kv_heads, max_blocks = tables.size(1);
  const T* q_data = query.data_ptr<T>();
  const T* k_data = key_cache.data_ptr<T>();
  const T* v_data = value_cache.data_ptr<T>();
  const int64_t* row_data = rows.data_ptr<int64_t>();
  const int64_t* table_data = tables.data_ptr<int64_t>();
  const int64_t* length_data = lengths.data_ptr<int64_t>();
  T* out_data = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);

  // One task per (sequence, kv head): the query heads of the group share each key read.
  at::parallel_for(0, num_seqs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(group * dim), acc(group * dim), row(dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / kv_heads, h = task % kv_heads;
      const int64_t length = length_data[s];
      const int64_t* table = table_data + s * max_blocks;
      const T* q_src = q_data + (row_data[s] * heads + h * group) * dim;
      load_row(q_src, q.data(), group * dim);
      for (float& x : q) x *= fscale;
      const T* k_head = k_data + h * num_slots * dim;
      const T* v_head = v_data + h * num_slots * dim;
      scores.assign(group * length, 0.0f);

      for (int64_t p = 0; p < length; ++p) {  // scores[g, p] = q_g . k_p
        const int64_t slot = table[p / block_size] * block_size + p % block_size;
        load_row(k_head + slot * dim, row.data(), dim);
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = q.data() + g * dim;
          float dot = 0.0f;
          for (int64_t d = 0; d < dim; ++d) dot += qg[d] * row[d];
          scores[g * length + p] = dot;
        }
      }
      for (int64_t g = 0; g < group; ++g) {  // softmax over p, in place
        float* sg = scores.data() + g * length;
        float peak = sg[0];  // length >= 1: a decoding token attends at least to itself
        for (int64_t p = 1; p < length; ++p) peak = std::max(peak, sg[p]);
        float total = 0.0f;
        for (int64_t p = 0; p < length; ++p) {
          sg[p] = std::exp(sg[p] - peak);
          total += sg[p];
        }
        const float inv = 1.0f / total;
        for (int64_t p = 0; p < length; ++p) sg[p] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t p = 0; p < length; ++p) {  // acc[g] = sum_p probs[g, p] * v_p
        const int64_t slot = table[p / block_size] * block_size + p % block_size;
        load_row(v_head + slot * dim, row.data(), dim);
        for (int64_t g = 0; g < group; ++g) {
          const float w = scores[g * length + p];
          float* ag = acc.data() + g * dim;
          for (int64_t d = 0; d < dim; ++d) ag[d] += w * row[d];
        }
      }
      T* dst = out_data + (s * heads + h * group) * dim;
      for (int64_t i = 0; i < group * dim; ++i) dst[i] = static_cast<T>(acc[i]);
    }
  });
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& rows,
                            const at::Tensor& tables, const at::Tensor& lengths,
                            int64_t block_size, double scale) {
  TORCH_CHECK(query.dim() == 3 && key_cache.dim() == 3, "query and cache must be 3-D");
  TORCH_CHECK(query.is_contiguous() && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "query and cache must be contiguous");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(), "key and value pools differ in shape");
  TORCH_CHECK(query.scalar_type() == key_cache.scalar_type() &&
                  key_cache.scalar_type() == value_cache.scalar_type(),
              "query and cache dtypes differ");
  TORCH_CHECK(query.size(2) == key_cache.size(2), "head_dim differs");
  TORCH_CHECK(query.size(1) % key_cache.size(0) == 0, "heads not a multiple of kv heads");
  TORCH_CHECK(rows.scalar_type() == at::kLong && tables.scalar_type() == at::kLong &&
                  lengths.scalar_type() == at::kLong,
              "rows, tables and lengths must be int64");
  TORCH_CHECK(rows.is_contiguous() && tables.is_contiguous() && lengths.is_contiguous(),
              "rows, tables and lengths must be contiguous");
  TORCH_CHECK(lengths.numel() == 0 || lengths.min().item<int64_t>() >= 1,
              "every sequence attends to at least one key");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == rows.size(0) &&
                  lengths.size(0) == rows.size(0),
              "one table row and one length per sequence");
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kBFloat16,
              "decode_attention supports float32 and bfloat16, got ", query.scalar_type());
  auto out = at::empty({rows.size(0), query.size(1) * query.size(2)}, query.options());
  const bool is_float = query.scalar_type() == at::kFloat;
  const int64_t dim = query.size(2);
#define SKIPDECODE_RUN(T, DIM)                                                                \
  decode_attention_kernel<T, DIM>(query, key_cache, value_cache, rows, tables, lengths,     \
                                  block_size, scale, out)
  if (is_float) {
    if (dim == 64) SKIPDECODE_RUN(float, 64);
    else if (dim == 128) SKIPDECODE_RUN(float, 128);
    else SKIPDECODE_RUN(float, 0);
  } else {
    if (dim == 64) SKIPDECODE_RUN(at::BFloat16, 64);
    else if (dim == 128) SKIPDECODE_RUN(at::BFloat16, 128);
    else SKIPDECODE_RUN(at::BFloat16, 0);
  }
#undef SKIPDECODE_RUN
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged single-query attention (CPU)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
