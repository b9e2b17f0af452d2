// The Python module of SeekServe's CPU kernels (loaded by seekserve/runner/cpu_kernels.py).
#include "kernels.h"

// Every kernel releases the GIL: the event loop thread formats responses meanwhile.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("paged_decode_attention", &paged_decode_attention, release(),
        "decode attention over the paged KV cache, blocks read in place");
  m.def("prefill_attention", &prefill_attention, release(),
        "causal attention of a prefill from position 0 over its own K/V (bf16, flash)");
  m.def("paged_prefill_attention", &paged_prefill_attention, release(),
        "causal attention of prefill chunks of several requests over their cached K/V, blocks "
        "read in place (bf16, flash)");
  m.def("prefill_attention_supported", &prefill_attention_supported,
        "whether prefill_attention takes these q, k (bf16, head_dim 64 or 128, built with "
        "AVX512-BF16)");
  m.def("rms_norm", &rms_norm, release(), "RMSNorm with the reference's rounding steps");
  m.def("add_rms_norm", &add_rms_norm, release(), "residual += delta in place, then RMSNorm of it");
  m.def("silu_and_mul", &silu_and_mul, release(), "silu(gate) * up of a fused [gate ‖ up] tensor");
  m.def("rotary_", &rotary_, release(), "rotate-half rotary embedding in place, transformers' rounding");
  m.def("huge_pages_empty", &huge_pages_empty, "a contiguous tensor on 2 MiB pages, uninitialised");
  m.def("huge_pages_copy", &huge_pages_copy, "a contiguous copy of a CPU tensor on 2 MiB pages");
  m.def("pack_int8", &pack_int8, "(N, K) int8 weights → int8_linear's tiled layout");
  m.def("int8_linear", &int8_linear, release(), "x @ (int8 weights · scales)ᵀ (+ bias), fp32 sums");
  m.def("pack_w8a8", &pack_w8a8, "(N, K) int8 weights → w8a8_linear's tiled layout, offsets");
  m.def("w8a8_linear", &w8a8_linear, release(),
        "x quantized to int8 in blocks of 32, times int8 weights (integer dot products)");
  m.def("w8a8_silu_mul", &w8a8_silu_mul, release(),
        "silu(gate) * up of a W8A8 gate_up layer whose rows are interleaved by 16, in its "
        "epilogue");
#if defined(__AVX512VNNI__)
  m.attr("fast_w8a8_linear") = true;
#else
  m.attr("fast_w8a8_linear") = false;
#endif
  m.def("write_kv_", &write_kv_, release(), "K/V rows of this step into their cache slots");
  m.def("argmax_rows", &argmax_rows, release(), "first maximal index of each row (NaN first)");
  // whether the tiled matrix-vector kernels were built with their vector instructions (without
  // them they run plain loops, slower than oneDNN: callers then keep to oneDNN)
#if defined(__AVX512BF16__)
  m.attr("fast_bf16_linear") = true;
#else
  m.attr("fast_bf16_linear") = false;
#endif
#if defined(__AVX512F__)
  m.attr("fast_int8_linear") = true;
#else
  m.attr("fast_int8_linear") = false;
#endif
  m.def("pack_bf16", &pack_bf16, "(N, K) bf16 weights → bf16_linear's tiled layout");
  m.def("amx_bf16_available", &amx_bf16_available, "whether bf16_linear may use AMX tiles");
  m.def("bf16_linear", &bf16_linear, release(), "x @ weightᵀ (+ bias) for a few rows, fp32 sums");
  pybind11::class_<Linear>(m, "Linear", "a linear layer as its Python module computes it")
      .def_static("dense", &Linear::dense)
      .def_static("packed", &Linear::packed)
      .def_static("int8", &Linear::int8)
      .def_static("w8a8", &Linear::w8a8)
      .def_static("w8a8_silu_mul", &Linear::w8a8_silu_mul)
      .def("__call__", &Linear::operator(), release());
  pybind11::class_<StepGroup>(m, "StepGroup", "one attention group of a step (decoder.cpp)")
      .def(pybind11::init([](int64_t start, int64_t count, int64_t kind, torch::Tensor block_table,
                             torch::Tensor kv_lens, torch::Tensor q_lens) {
             TORCH_CHECK(kind >= 0 && kind <= 2, "kind must be 0 (decode), 1 (causal) or 2 (paged), got ", kind);
             return StepGroup{start, count, static_cast<StepGroup::Kind>(kind), std::move(block_table),
                              std::move(kv_lens), std::move(q_lens)};
           }),
           pybind11::arg("start"), pybind11::arg("count"), pybind11::arg("kind"),
           pybind11::arg("block_table"), pybind11::arg("kv_lens"), pybind11::arg("q_lens"));
  pybind11::class_<Decoder>(m, "Decoder", "a step of a llama-family model, all layers")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, double, torch::Tensor>())
      .def("add_layer", &Decoder::add_layer)
      .def("forward", &Decoder::forward, release(), pybind11::arg("x"), pybind11::arg("groups"),
           pybind11::arg("slot_mapping"), pybind11::arg("cos"), pybind11::arg("sin"),
           pybind11::arg("rows") = pybind11::none(), pybind11::arg("sample") = pybind11::none());
}
