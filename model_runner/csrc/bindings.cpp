// The CPU kernels as one extension module (built by model_runner/cpu_kernels.py).
#include "cpu_common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pybind11::call_guard;
  using pybind11::gil_scoped_release;
  m.def("decode_attention", &skipdecode::decode_attention,
        "paged single-query attention: [S, heads * head_dim]", call_guard<gil_scoped_release>());
  m.def("rms_norm", &skipdecode::rms_norm, "weight * rms_norm(x) with fp32 statistics",
        call_guard<gil_scoped_release>());
  m.def("add_rms_norm", &skipdecode::add_rms_norm,
        "(x + residual, weight * rms_norm(x + residual))", call_guard<gil_scoped_release>());
  m.def("silu_and_mul", &skipdecode::silu_and_mul, "silu(gate) * up of [gate | up] rows",
        call_guard<gil_scoped_release>());
  m.def("rotary_store", &skipdecode::rotary_store,
        "rotate queries and keys (RoPE), store keys and values at their slots, return queries",
        call_guard<gil_scoped_release>());
}
