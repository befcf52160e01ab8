// Operator schemas of the compiled extension, and the Python module that loads them.
//
// Registering through TORCH_LIBRARY (not pybind11 functions) makes the ops dispatchable per device
// and visible to torch.compile. Device implementations live in cpu_ops.cpp (and cuda_ops.cpp when
// the CUDA build is on).
#include <Python.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

TORCH_LIBRARY(gro_C, m) {
  // Chunk epilogue, forward: lse, target logprob and (optionally) entropy per row of `logits`.
  // vocab_shard: `logits` are one vocabulary shard; a target outside [0, vocab) that is not
  // ignore_index is another shard's token (logprob 0; lse and entropy of the shard still written).
  m.def(
      "logprob_forward(Tensor logits, Tensor targets, float inv_temperature, int ignore_index, "
      "Tensor(a!) logprob, Tensor(b!) lse, Tensor(c!)? entropy, bool vocab_shard=False) -> ()");
  // Chunk epilogue, backward: overwrite `logits` with dLoss/dlogits. vocab_shard: lse and entropy are
  // the full vocabulary's, and rows whose target is another shard's get no one-hot term.
  m.def(
      "logit_grad_(Tensor(a!) logits, Tensor targets, float inv_temperature, int ignore_index, "
      "Tensor lse, Tensor? entropy, Tensor grad_logprob, Tensor? grad_entropy, bool vocab_shard=False) -> ()");
  // Chunk epilogue, forward for grad-in-forward: as logprob_forward, and `logits` overwritten with
  // E = exp(z/tau - rowmax) (0 on ignored rows) with softmax = E * exp_scale per row. No vocab_shard.
  m.def(
      "logprob_forward_exp_(Tensor(a!) logits, Tensor targets, float inv_temperature, int ignore_index, "
      "Tensor(b!) logprob, Tensor(c!) lse, Tensor(d!)? entropy, Tensor(e!) exp_scale) -> ()");
  // Segmented group advantages (docs/math.md §2): rewards [B] fp32 sorted by group, group g is
  // rewards[offsets[g]:offsets[g+1]]; mode is 'grpo', 'dr_grpo' or 'rloo'. Returns fp32 [B].
  m.def("group_advantages(Tensor rewards, Tensor offsets, str mode, float eps) -> Tensor");
}

// Shape-only implementation for torch.compile / fake tensors: the output is shaped like rewards.
TORCH_LIBRARY_IMPL(gro_C, Meta, m) {
  m.impl("group_advantages", [](const at::Tensor& rewards, const at::Tensor&, c10::string_view, double) {
    return at::empty_like(rewards);
  });
}

// `import gro_kernels._C` runs the static registrations above; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
