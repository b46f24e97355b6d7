// Paged decode attention on CPU: one query per sequence, keys and values read in place from the
// head-major KV pool through the sequence's block table (no gathered copy), softmax in fp32.
//
// query:   [rows, heads, head_dim]            (the layer's running rows)
// cache:   [kv_heads, num_slots, head_dim]    (key and value pools, slot = block * bs + offset)
// rows:    [S] query row of each sequence;  tables: [S, max_blocks] block ids;
// lengths: [S] keys each sequence attends to (its positions 0 .. length - 1).
// Returns  [S, heads * head_dim].
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_common.h"

namespace skipdecode {
namespace {

// One (sequence, KV head): the GROUP query heads that share the KV head read each key and value
// once. DIM > 0 / GROUP > 0: known at compile time, so q, the accumulators and a key row live in
// fixed-size local arrays (registers) and the loops unroll; 0: any size (heap buffers).
template <typename T, int64_t DIM, int64_t GROUP>
void attend_one(const T* q_src, const T* k_head, const T* v_head, const int64_t* table,
                int64_t length, int64_t block_size, float scale, int64_t dim_rt,
                int64_t group_rt, float* q, float* acc, float* row, std::vector<float>& scores,
                T* dst) {
  const int64_t dim = DIM > 0 ? DIM : dim_rt, group = GROUP > 0 ? GROUP : group_rt;
  load_row(q_src, q, group * dim);
  for (int64_t i = 0; i < group * dim; ++i) q[i] *= scale;
  scores.resize(group * length);
  float* sc = scores.data();
  // Walk the table block by block: no per-position division to find a key's slot.
  for (int64_t start = 0, b = 0; start < length; start += block_size, ++b) {
    const T* k_block = k_head + table[b] * block_size * dim;
    const int64_t count = std::min(block_size, length - start);
    for (int64_t o = 0; o < count; ++o) {  // scores[g, p] = q_g . k_p
      load_row(k_block + o * dim, row, dim);
      for (int64_t g = 0; g < group; ++g) {
        float dot = 0.0f;
        for (int64_t d = 0; d < dim; ++d) dot += q[g * dim + d] * row[d];
        sc[g * length + start + o] = dot;
      }
    }
  }
  float inv_total[GROUP > 0 ? GROUP : 1];
  std::vector<float> inv_heap(GROUP > 0 ? 0 : group);
  float* inv = GROUP > 0 ? inv_total : inv_heap.data();
  for (int64_t g = 0; g < group; ++g) {  // unnormalised softmax over p, in place
    float* sg = sc + g * length;
    float peak = sg[0];  // length >= 1: a decoding token attends at least to itself
    for (int64_t p = 1; p < length; ++p) peak = std::max(peak, sg[p]);
    float total = 0.0f;
    for (int64_t p = 0; p < length; ++p) {
      sg[p] = std::exp(sg[p] - peak);
      total += sg[p];
    }
    inv[g] = 1.0f / total;
  }
  for (int64_t i = 0; i < group * dim; ++i) acc[i] = 0.0f;
  for (int64_t start = 0, b = 0; start < length; start += block_size, ++b) {
    const T* v_block = v_head + table[b] * block_size * dim;
    const int64_t count = std::min(block_size, length - start);
    for (int64_t o = 0; o < count; ++o) {  // acc[g] = sum_p weight[g, p] * v_p
      load_row(v_block + o * dim, row, dim);
      for (int64_t g = 0; g < group; ++g) {
        const float w = sc[g * length + start + o];
        for (int64_t d = 0; d < dim; ++d) acc[g * dim + d] += w * row[d];
      }
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t d = 0; d < dim; ++d) dst[g * dim + d] = static_cast<T>(acc[g * dim + d] * inv[g]);
  }
}

template <typename T, int64_t DIM, int64_t GROUP>
void decode_attention_kernel(const at::Tensor& query, const at::Tensor& key_cache,
                             const at::Tensor& value_cache, const at::Tensor& rows,
                             const at::Tensor& tables, const at::Tensor& lengths,
                             int64_t block_size, double scale, at::Tensor& out) {
  const int64_t num_seqs = rows.size(0), heads = query.size(1), dim = query.size(2);
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
  constexpr bool fixed = DIM > 0 && GROUP > 0;
  std::atomic<bool> empty{false};

  // One task per (sequence, kv head).
  at::parallel_for(0, num_seqs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float q_fixed[fixed ? GROUP * DIM : 1], acc_fixed[fixed ? GROUP * DIM : 1];
    alignas(64) float row_fixed[fixed ? DIM : 1];
    std::vector<float> q_heap(fixed ? 0 : group * dim), acc_heap(fixed ? 0 : group * dim);
    std::vector<float> row_heap(fixed ? 0 : dim), scores;
    float* q = fixed ? q_fixed : q_heap.data();
    float* acc = fixed ? acc_fixed : acc_heap.data();
    float* row = fixed ? row_fixed : row_heap.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / kv_heads, h = task % kv_heads;
      if (length_data[s] < 1) {  // a decoding token attends at least to itself
        empty = true;
        continue;
      }
      attend_one<T, DIM, GROUP>(q_data + (row_data[s] * heads + h * group) * dim,
                                k_data + h * num_slots * dim, v_data + h * num_slots * dim,
                                table_data + s * max_blocks, length_data[s], block_size, fscale,
                                dim, group, q, acc, row, scores,
                                out_data + (s * heads + h * group) * dim);
    }
  });
  TORCH_CHECK(!empty, "every sequence attends to at least one key");
}

// Compile-time head_dim and group size for the common shapes; anything else runs generic.
template <typename T>
void dispatch(int64_t dim, int64_t group, const at::Tensor& query, const at::Tensor& key_cache,
              const at::Tensor& value_cache, const at::Tensor& rows, const at::Tensor& tables,
              const at::Tensor& lengths, int64_t block_size, double scale, at::Tensor& out) {
#define SKIPDECODE_CASE(D, G)                                                              \
  if (dim == D && group == G) {                                                            \
    return decode_attention_kernel<T, D, G>(query, key_cache, value_cache, rows, tables,   \
                                            lengths, block_size, scale, out);              \
  }
  SKIPDECODE_CASE(64, 1) SKIPDECODE_CASE(64, 2) SKIPDECODE_CASE(64, 3) SKIPDECODE_CASE(64, 4)
  SKIPDECODE_CASE(128, 1) SKIPDECODE_CASE(128, 2) SKIPDECODE_CASE(128, 4)
  SKIPDECODE_CASE(128, 8)
#undef SKIPDECODE_CASE
  decode_attention_kernel<T, 0, 0>(query, key_cache, value_cache, rows, tables, lengths,
                                   block_size, scale, out);
}

}  // namespace

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
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == rows.size(0) &&
                  lengths.size(0) == rows.size(0),
              "one table row and one length per sequence");
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kBFloat16,
              "decode_attention supports float32 and bfloat16, got ", query.scalar_type());
  auto out = at::empty({rows.size(0), query.size(1) * query.size(2)}, query.options());
  const int64_t dim = query.size(2), group = query.size(1) / key_cache.size(0);
  if (query.scalar_type() == at::kFloat) {
    dispatch<float>(dim, group, query, key_cache, value_cache, rows, tables, lengths, block_size,
                    scale, out);
  } else {
    dispatch<at::BFloat16>(dim, group, query, key_cache, value_cache, rows, tables, lengths,
                           block_size, scale, out);
  }
  return out;
}

}  // namespace skipdecode
