// CUDA implementations of the gro_C ops: check, allocate scratch, launch the torch-free kernels of
// csrc/cuda on the current stream of the tensors' device.
//
// Unlike the CPU ops, nothing here reads device memory on the host (no syncs): a target id outside
// [0, vocab) gives NaN outputs for its row (unless the chunk is a vocabulary shard), and malformed
// group offsets give NaN advantages (see the csrc/cuda headers). The public Python API validates both
// eagerly before calling these ops.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../csrc/cuda/group_advantages.cuh"
#include "../csrc/cuda/logprob_epilogue.cuh"
#include "checks.h"

namespace {

void check_chunk_fits_grid(const at::Tensor& logits) {
  TORCH_CHECK(logits.size(0) <= std::numeric_limits<int32_t>::max(), "gro_C: at most 2^31-1 rows per chunk, got ",
              logits.size(0));
  TORCH_CHECK(logits.size(1) <= gro::cuda::max_vocab(), "gro_C: vocab must be <= ", gro::cuda::max_vocab(),
              " on CUDA, got ", logits.size(1));
}

void logprob_forward_cuda(const at::Tensor& logits, const at::Tensor& targets, double inv_temperature,
                          int64_t ignore_index, const at::Tensor& logprob, const at::Tensor& lse,
                          const std::optional<at::Tensor>& entropy, bool vocab_shard) {
  gro::check_logits_chunk(logits, targets, c10::DeviceType::CUDA, /*allow_vocab_major=*/false);
  gro::check_row_vector(logprob, logits, "logprob");
  gro::check_row_vector(lse, logits, "lse");
  if (entropy.has_value()) gro::check_row_vector(*entropy, logits, "entropy");
  check_chunk_fits_grid(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  at::Tensor workspace = at::empty({gro::cuda::forward_workspace_floats(rows, vocab)}, logits.options());
  C10_CUDA_CHECK(gro::cuda::logprob_forward(
      logits.data_ptr<float>(), rows, vocab, logits.stride(0), targets.data_ptr<int64_t>(),
      static_cast<float>(inv_temperature), ignore_index, vocab_shard, logprob.data_ptr<float>(),
      entropy.has_value() ? entropy->data_ptr<float>() : nullptr, lse.data_ptr<float>(), workspace.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream().stream()));
}

void logit_grad_cuda(const at::Tensor& logits, const at::Tensor& targets, double inv_temperature,
                     int64_t ignore_index, const at::Tensor& lse, const std::optional<at::Tensor>& entropy,
                     const at::Tensor& grad_logprob, const std::optional<at::Tensor>& grad_entropy,
                     bool vocab_shard) {
  gro::check_logits_chunk(logits, targets, c10::DeviceType::CUDA, /*allow_vocab_major=*/false);
  gro::check_row_vector(lse, logits, "lse");
  gro::check_row_vector(grad_logprob, logits, "grad_logprob");
  TORCH_CHECK(grad_entropy.has_value() == entropy.has_value(),
              "gro_C: grad_entropy and entropy must be given together");
  if (grad_entropy.has_value()) {
    gro::check_row_vector(*grad_entropy, logits, "grad_entropy");
    gro::check_row_vector(*entropy, logits, "entropy");
  }
  check_chunk_fits_grid(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  C10_CUDA_CHECK(gro::cuda::logit_grad_inplace(
      logits.data_ptr<float>(), logits.size(0), logits.size(1), logits.stride(0), targets.data_ptr<int64_t>(),
      static_cast<float>(inv_temperature), ignore_index, vocab_shard, lse.data_ptr<float>(),
      entropy.has_value() ? entropy->data_ptr<float>() : nullptr, grad_logprob.data_ptr<float>(),
      grad_entropy.has_value() ? grad_entropy->data_ptr<float>() : nullptr,
      c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor group_advantages_cuda(const at::Tensor& rewards, const at::Tensor& offsets, c10::string_view mode,
                                 double eps) {
  gro::check_group_inputs(rewards, offsets, eps, c10::DeviceType::CUDA);
  const gro::AdvantageMode parsed = gro::parse_advantage_mode(mode);
  const c10::cuda::CUDAGuard guard(rewards.device());
  at::Tensor advantages = at::empty_like(rewards);
  at::Tensor flag = at::empty({1}, offsets.options().dtype(at::kInt));
  C10_CUDA_CHECK(gro::cuda::group_advantages(rewards.data_ptr<float>(), offsets.data_ptr<int64_t>(), rewards.size(0),
                                             offsets.size(0) - 1, parsed, static_cast<float>(eps),
                                             advantages.data_ptr<float>(), flag.data_ptr<int>(),
                                             c10::cuda::getCurrentCUDAStream().stream()));
  return advantages;
}

}  // namespace

TORCH_LIBRARY_IMPL(gro_C, CUDA, m) {
  m.impl("logprob_forward", &logprob_forward_cuda);
  m.impl("logit_grad_", &logit_grad_cuda);
  m.impl("group_advantages", &group_advantages_cuda);
}
