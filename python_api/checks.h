// Input checks shared by the device implementations of the gro_C ops. The public Python API
// validates user input with friendlier messages; these guard the op boundary itself so that a
// direct torch.ops call can never reach a kernel with a pointer it would misuse.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include "../csrc/common/group_math.h"

namespace gro {

// Layout of a logits chunk [rows, vocab]: token-major (each row contiguous) or vocab-major (each
// column contiguous: the transpose of a [vocab, rows] GEMM output), and the stride `ld` between rows
// (token-major) or columns (vocab-major). See csrc/cpu/logprob_epilogue.h.
struct ChunkLayout {
  bool vocab_major;
  int64_t ld;
};

// allow_vocab_major: the device has vocab-major kernels (CPU); otherwise rows must be contiguous.
inline ChunkLayout check_logits_chunk(const at::Tensor& logits, const at::Tensor& targets, c10::DeviceType device,
                                      bool allow_vocab_major) {
  TORCH_CHECK(logits.device().type() == device, "gro_C: logits must be on ", device, ", got ", logits.device());
  TORCH_CHECK(logits.dim() == 2, "gro_C: logits must be 2-D [rows, vocab], got shape ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat, "gro_C: logits must be float32, got ", logits.scalar_type());
  // The stride of a dimension of size <= 1 is never used, so it may be anything.
  const bool token_major = logits.stride(1) == 1 && (logits.size(0) <= 1 || logits.stride(0) >= logits.size(1));
  const bool vocab_major = logits.stride(0) == 1 && (logits.size(1) <= 1 || logits.stride(1) >= logits.size(0));
  if (allow_vocab_major) {
    TORCH_CHECK(token_major || vocab_major, "gro_C: logits must have contiguous rows (stride(1) == 1) or contiguous "
                "columns (stride(0) == 1), got strides ", logits.strides(), " for shape ", logits.sizes());
  } else {
    TORCH_CHECK(token_major, "gro_C: logits rows must be contiguous (stride(1) == 1), got strides ", logits.strides(),
                " for shape ", logits.sizes());
  }
  TORCH_CHECK(targets.device() == logits.device(), "gro_C: targets must be on ", logits.device(), ", got ",
              targets.device());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.is_contiguous(),
              "gro_C: targets must be contiguous [", logits.size(0), "], got shape ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "gro_C: targets must be int64, got ", targets.scalar_type());
  return token_major ? ChunkLayout{false, logits.stride(0)} : ChunkLayout{true, logits.stride(1)};
}

// t: a contiguous [n] float32 (or int64, with is_index) tensor on `device`.
inline void check_vector(const at::Tensor& t, int64_t n, const c10::Device& device, const char* name,
                         bool is_index = false) {
  TORCH_CHECK(t.device() == device, "gro_C: ", name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n && t.is_contiguous(), "gro_C: ", name, " must be contiguous [", n,
              "], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == (is_index ? at::kLong : at::kFloat), "gro_C: ", name, " must be ",
              is_index ? "int64" : "float32", ", got ", t.scalar_type());
}

// A per-row fp32 vector of a logits chunk.
inline void check_row_vector(const at::Tensor& t, const at::Tensor& logits, const char* name) {
  check_vector(t, logits.size(0), logits.device(), name);
}

// CPU targets: each id in [0, vocab) or ignore_index. A wrong id would index outside a row: refuse it here
// instead of reading stray memory.
inline void check_cpu_targets_in_range(const at::Tensor& targets, int64_t vocab, int64_t ignore_index) {
  const int64_t* y = targets.data_ptr<int64_t>();
  for (int64_t r = 0; r < targets.size(0); ++r) {
    TORCH_CHECK(y[r] == ignore_index || (y[r] >= 0 && y[r] < vocab), "gro_C: target id ", y[r], " at row ", r,
                " is outside [0, ", vocab, ") and is not ignore_index=", ignore_index);
  }
}

// group_advantages: rewards [B] fp32, offsets [G+1] int64 on the same device, a known mode, eps >= 0.
inline void check_group_inputs(const at::Tensor& rewards, const at::Tensor& offsets, double eps,
                               c10::DeviceType device) {
  TORCH_CHECK(rewards.device().type() == device, "gro_C: rewards must be on ", device, ", got ", rewards.device());
  TORCH_CHECK(rewards.dim() == 1 && rewards.is_contiguous(), "gro_C: rewards must be contiguous 1-D [B], got shape ",
              rewards.sizes());
  TORCH_CHECK(rewards.scalar_type() == at::kFloat, "gro_C: rewards must be float32, got ", rewards.scalar_type());
  TORCH_CHECK(offsets.device() == rewards.device(), "gro_C: offsets must be on ", rewards.device(), ", got ",
              offsets.device());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.is_contiguous(),
              "gro_C: offsets must be contiguous 1-D [num_groups + 1], got shape ", offsets.sizes());
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "gro_C: offsets must be int64, got ", offsets.scalar_type());
  TORCH_CHECK(eps >= 0.0, "gro_C: eps must be >= 0, got ", eps);
}

inline AdvantageMode parse_advantage_mode(c10::string_view mode) {
  if (mode == "grpo") return AdvantageMode::kGrpo;
  if (mode == "dr_grpo") return AdvantageMode::kDrGrpo;
  if (mode == "rloo") return AdvantageMode::kRloo;
  TORCH_CHECK(false, "gro_C: mode must be one of 'grpo', 'dr_grpo', 'rloo', got '", mode, "'");
}

}  // namespace gro
