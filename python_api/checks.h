// Input checks shared by the device implementations of the gro_C ops. The public Python API
// validates user input with friendlier messages; these guard the op boundary itself so that a
// direct torch.ops call can never reach a kernel with a pointer it would misuse.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace gro {

inline void check_logits_chunk(const at::Tensor& logits, const at::Tensor& targets, c10::DeviceType device) {
  TORCH_CHECK(logits.device().type() == device, "gro_C: logits must be on ", device, ", got ", logits.device());
  TORCH_CHECK(logits.dim() == 2, "gro_C: logits must be 2-D [rows, vocab], got shape ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat, "gro_C: logits must be float32, got ", logits.scalar_type());
  TORCH_CHECK(logits.stride(1) == 1, "gro_C: logits rows must be contiguous (stride(1) == 1), got strides ",
              logits.strides());
  TORCH_CHECK(targets.device() == logits.device(), "gro_C: targets must be on ", logits.device(), ", got ",
              targets.device());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.is_contiguous(),
              "gro_C: targets must be contiguous [", logits.size(0), "], got shape ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "gro_C: targets must be int64, got ", targets.scalar_type());
}

inline void check_row_vector(const at::Tensor& t, const at::Tensor& logits, const char* name) {
  TORCH_CHECK(t.device() == logits.device(), "gro_C: ", name, " must be on ", logits.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0) && t.is_contiguous(), "gro_C: ", name,
              " must be contiguous [", logits.size(0), "], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "gro_C: ", name, " must be float32, got ", t.scalar_type());
}

}  // namespace gro
