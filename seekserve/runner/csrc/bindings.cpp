// The Python module of SeekServe's CPU kernels (loaded by seekserve/runner/cpu_kernels.py).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention over the paged KV cache, blocks read in place");
  m.def("rms_norm", &rms_norm, "RMSNorm with the reference's rounding steps");
  m.def("add_rms_norm", &add_rms_norm, "residual += delta in place, then RMSNorm of it");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up of a fused [gate ‖ up] tensor");
}
