// CPU implementations of the gro_C ops: check, then hand raw pointers to csrc/cpu.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../csrc/cpu/group_advantages.h"
#include "../csrc/cpu/logprob_epilogue.h"
#include "checks.h"

namespace {

void logprob_forward_cpu(const at::Tensor& logits, const at::Tensor& targets, double inv_temperature,
                         int64_t ignore_index, const at::Tensor& logprob, const at::Tensor& lse,
                         const std::optional<at::Tensor>& entropy, bool vocab_shard) {
  const gro::ChunkLayout layout = gro::check_logits_chunk(logits, targets, c10::DeviceType::CPU, true);
  gro::check_row_vector(logprob, logits, "logprob");
  gro::check_row_vector(lse, logits, "lse");
  if (entropy.has_value()) gro::check_row_vector(*entropy, logits, "entropy");
  TORCH_CHECK(inv_temperature > 0.0, "gro_C: inv_temperature must be > 0, got ", inv_temperature);
  // On a vocabulary shard, ids outside [0, vocab) are other shards' tokens (the kernel reads no logit for them).
  if (!vocab_shard) gro::check_cpu_targets_in_range(targets, logits.size(1), ignore_index);
  const auto forward = layout.vocab_major ? &gro::cpu::logprob_forward_vocab_major : &gro::cpu::logprob_forward;
  forward(logits.data_ptr<float>(), logits.size(0), logits.size(1), layout.ld, targets.data_ptr<int64_t>(),
          static_cast<float>(inv_temperature), ignore_index, logprob.data_ptr<float>(),
          entropy.has_value() ? entropy->data_ptr<float>() : nullptr, lse.data_ptr<float>(), at::get_num_threads());
}

void logit_grad_cpu(const at::Tensor& logits, const at::Tensor& targets, double inv_temperature, int64_t ignore_index,
                    const at::Tensor& lse, const std::optional<at::Tensor>& entropy, const at::Tensor& grad_logprob,
                    const std::optional<at::Tensor>& grad_entropy, bool vocab_shard) {
  const gro::ChunkLayout layout = gro::check_logits_chunk(logits, targets, c10::DeviceType::CPU, true);
  gro::check_row_vector(lse, logits, "lse");
  gro::check_row_vector(grad_logprob, logits, "grad_logprob");
  TORCH_CHECK(grad_entropy.has_value() == entropy.has_value(),
              "gro_C: grad_entropy and entropy must be given together");
  if (grad_entropy.has_value()) {
    gro::check_row_vector(*grad_entropy, logits, "grad_entropy");
    gro::check_row_vector(*entropy, logits, "entropy");
  }
  if (!vocab_shard) gro::check_cpu_targets_in_range(targets, logits.size(1), ignore_index);
  const auto logit_grad =
      layout.vocab_major ? &gro::cpu::logit_grad_inplace_vocab_major : &gro::cpu::logit_grad_inplace;
  logit_grad(logits.data_ptr<float>(), logits.size(0), logits.size(1), layout.ld, targets.data_ptr<int64_t>(),
             static_cast<float>(inv_temperature), ignore_index, lse.data_ptr<float>(),
             entropy.has_value() ? entropy->data_ptr<float>() : nullptr, grad_logprob.data_ptr<float>(),
             grad_entropy.has_value() ? grad_entropy->data_ptr<float>() : nullptr, at::get_num_threads());
}

void logprob_forward_exp_cpu(const at::Tensor& logits, const at::Tensor& targets, double inv_temperature,
                             int64_t ignore_index, const at::Tensor& logprob, const at::Tensor& lse,
                             const std::optional<at::Tensor>& entropy, const at::Tensor& exp_scale) {
  const gro::ChunkLayout layout = gro::check_logits_chunk(logits, targets, c10::DeviceType::CPU, true);
  gro::check_row_vector(logprob, logits, "logprob");
  gro::check_row_vector(lse, logits, "lse");
  gro::check_row_vector(exp_scale, logits, "exp_scale");
  if (entropy.has_value()) gro::check_row_vector(*entropy, logits, "entropy");
  TORCH_CHECK(inv_temperature > 0.0, "gro_C: inv_temperature must be > 0, got ", inv_temperature);
  gro::check_cpu_targets_in_range(targets, logits.size(1), ignore_index);
  gro::cpu::logprob_forward_exp(logits.data_ptr<float>(), logits.size(0), logits.size(1), layout.ld,
                                layout.vocab_major, targets.data_ptr<int64_t>(), static_cast<float>(inv_temperature),
                                ignore_index, logprob.data_ptr<float>(),
                                entropy.has_value() ? entropy->data_ptr<float>() : nullptr, lse.data_ptr<float>(),
                                exp_scale.data_ptr<float>(), at::get_num_threads());
}

void check_offsets_partition(const at::Tensor& offsets, int64_t batch) {
  // Malformed offsets would make a group read outside `rewards`: refuse them here.
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t groups = offsets.size(0) - 1;
  TORCH_CHECK(o[0] == 0 && o[groups] == batch, "gro_C: offsets must start at 0 and end at rewards.size(0)=", batch,
              ", got ", o[0], " and ", o[groups]);
  for (int64_t g = 0; g < groups; ++g) {
    TORCH_CHECK(o[g] <= o[g + 1], "gro_C: offsets must be non-decreasing, got offsets[", g, "]=", o[g], " > offsets[",
                g + 1, "]=", o[g + 1]);
  }
}

at::Tensor group_advantages_cpu(const at::Tensor& rewards, const at::Tensor& offsets, c10::string_view mode,
                                double eps) {
  gro::check_group_inputs(rewards, offsets, eps, c10::DeviceType::CPU);
  const gro::AdvantageMode parsed = gro::parse_advantage_mode(mode);
  check_offsets_partition(offsets, rewards.size(0));
  at::Tensor advantages = at::empty_like(rewards);
  gro::cpu::group_advantages(rewards.data_ptr<float>(), offsets.data_ptr<int64_t>(), offsets.size(0) - 1, parsed,
                             static_cast<float>(eps), advantages.data_ptr<float>(), at::get_num_threads());
  return advantages;
}

}  // namespace

TORCH_LIBRARY_IMPL(gro_C, CPU, m) {
  m.impl("logprob_forward", &logprob_forward_cpu);
  m.impl("logit_grad_", &logit_grad_cpu);
  m.impl("logprob_forward_exp_", &logprob_forward_exp_cpu);
  m.impl("group_advantages", &group_advantages_cpu);
}
