// Fused bf16 LM head on CPU: the logits GEMM and its epilogue in one loop, so no chunk of logits ever goes to
// memory (docs/math.md §6, "Fused bf16 CPU head").
//
// For bf16 hidden states and head, the chunked backend's GEMM writes an fp32 chunk that the epilogue then
// reads back (twice in the forward; read, rewritten and converted in the backward): next to AMX GEMMs that
// costs as much as a GEMM. Here the oneDNN micro-kernel ATen exports (at::native::cpublas::brgemm) computes
// one fp32 tile z [64 vocabulary entries, 64 tokens] = W_block h^T at a time (vocab-major, as the CPU chunk
// buffer), and the tile epilogues of csrc/cpu/logprob_tiles.h consume it while it is in L1:
// - head_forward_lowp: running lse / entropy statistics per token (online max) and the target logit;
// - head_logit_grad_lowp_: dLoss/dz of a vocabulary tile, rounded to bf16 once, straight into the operand of
//   the dhidden / dweight GEMMs (vocab-major [Vt, rows]), plus the fp32 bias gradient.
// Hidden rows go to the micro-kernel as VNNI panels of 64 tokens (pack_panel): the forward packs each item's
// panels itself (no copy of the batch), the backward packs the row block once for all vocabulary tiles.
//
// Threads: the forward splits (token superblock, vocabulary range) items, with per-range partial statistics
// merged per token in range order (deterministic for a given thread count and batch); the backward splits the
// tile's 64-entry vocabulary blocks, each written by one thread.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../csrc/cpu/logprob_tiles.h"
#include "checks.h"

namespace {

using bf16 = at::BFloat16;
constexpr int64_t kTile = gro::cpu::kTileTokens;  // tokens per panel, vocabulary entries per block
constexpr int64_t kSuperPanels = 4;  // token panels per forward item: each W block is used 4 times from L1/L2
// Vocabulary blocks per backward item: each hidden panel is used by 8 W blocks (512 KiB at H 1024, in L2) per
// read from L3 (measured: 6% faster than one block at N 4096, H 896, V 151936).
constexpr int64_t kGroup = 8;

// bf16 only: the fp16 micro-kernel needs AMX-FP16, which the machines this is tested on lack (fp16 heads keep
// the chunked path, whose GEMM is MKL's fp16 GEMM with an fp32 result).
bool fused_head_available(c10::string_view dtype) {
  return dtype == "bfloat16" && at::native::cpublas::could_pack(at::kBFloat16);
}

void check_head_operands(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const char* op) {
  TORCH_CHECK(hidden.device().is_cpu() && weight.device().is_cpu(), "gro_C: ", op, " is CPU-only");
  TORCH_CHECK(hidden.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16, "gro_C: ", op,
              " needs bfloat16 hidden and weight, got ", hidden.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(at::native::cpublas::could_pack(at::kBFloat16), "gro_C: ", op,
              ": this CPU's micro-kernel has no bfloat16 tiles (see fused_head_available)");
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1), "gro_C: ", op,
              " needs hidden [N, H] and weight [V, H], got ", hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK(hidden.size(1) % 2 == 0 && hidden.size(1) > 0, "gro_C: ", op,
              " needs an even hidden size (VNNI pairs), got ", hidden.size(1));
  TORCH_CHECK(weight.stride(1) == 1 && (weight.size(0) <= 1 || weight.stride(0) >= weight.size(1)), "gro_C: ", op,
              " needs weight rows contiguous, got strides ", weight.strides());
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                    bias->is_contiguous() && bias->device().is_cpu(),
                "gro_C: ", op, " needs bias contiguous bfloat16 [", weight.size(0), "], got ", bias->sizes(), " ",
                bias->scalar_type());
  }
}

// Tokens t0 : t0 + tokens of hidden (rows of stride ldh) as the micro-kernel's B operand [K = H, 64]: VNNI
// pairs, out[kk][j] = (h[t0 + j][2kk], h[t0 + j][2kk + 1]) as one 32-bit word, i.e. a transpose of the rows
// read as 32-bit words. Columns past `tokens` are zero.
void pack_panel(const bf16* hidden, int64_t ldh, int64_t t0, int64_t tokens, int64_t k, bf16* out) {
  const int64_t pairs = k / 2;
  uint32_t* dst = reinterpret_cast<uint32_t*>(out);
  for (int64_t j = 0; j < tokens; ++j) {
    const bf16* row = hidden + (t0 + j) * ldh;
    for (int64_t kk = 0; kk < pairs; ++kk) {
      uint32_t word;
      std::memcpy(&word, row + 2 * kk, sizeof(word));
      dst[kk * kTile + j] = word;
    }
  }
  for (int64_t kk = 0; kk < pairs; ++kk) std::fill(dst + kk * kTile + tokens, dst + (kk + 1) * kTile, 0u);
}

// hidden [N, H] -> [ceil(N / 64), H, 64]: panel p holds tokens 64p : 64p + 64 (pack_panel).
at::Tensor pack_hidden(const at::Tensor& hidden) {
  const int64_t n = hidden.size(0), k = hidden.size(1);
  const int64_t panels = (n + kTile - 1) / kTile;
  at::Tensor packed = at::empty({panels, k, kTile}, hidden.options());
  const bf16* in = hidden.data_ptr<bf16>();
  bf16* out = packed.data_ptr<bf16>();
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      pack_panel(in, hidden.stride(0), p * kTile, std::min(kTile, n - p * kTile), k, out + p * k * kTile);
    }
  });
  return packed;
}

// tile [entries, 64] fp32 = W[v0 : v0 + entries] @ (the panel's tokens)^T (+ bias); `tokens` columns written.
void compute_tile(float* tile, const bf16* weight, int64_t ldw, const bf16* bias, const bf16* panel, int64_t k,
                  int64_t v0, int64_t entries, int64_t tokens) {
  at::native::cpublas::brgemm(entries, tokens, k, ldw, kTile, kTile, false, weight + v0 * ldw, panel, tile, true);
  if (bias != nullptr) {
    for (int64_t i = 0; i < entries; ++i) {
      const float b = static_cast<float>(bias[v0 + i]);
      float* row = tile + i * kTile;
      for (int64_t j = 0; j < tokens; ++j) row[j] += b;
    }
  }
}

// A thread's tile, zero-filled once: columns past a short panel's tokens are read by the vector epilogues
// (never stored), and must hold finite values.
struct Tile {
  alignas(64) float data[kTile * kTile];
  Tile() { std::fill_n(data, kTile * kTile, 0.0f); }
};

// The logit store (grad-in-forward losses, docs/math.md §6): the fp32 tiles of vocabulary blocks 0 : blocks, block b
// and token panel p at tiles + (b * panels + p) * kTileTokens^2, written by the forward and read back by the backward
// instead of recomputing them (the same tiles, bit for bit: same packed panels, same micro-kernel call).
struct LogitStore {
  float* tiles = nullptr;
  int64_t blocks = 0;
  int64_t panels = 0;
  float* tile(int64_t block, int64_t panel) const { return tiles + (block * panels + panel) * kTile * kTile; }
};

void head_forward(const at::Tensor& hidden, const at::Tensor& weight, const bf16* bias, const int64_t* targets,
                  float inv_tau, int64_t ignore_index, float* logprob, float* lse, float* entropy,
                  const LogitStore& store) {
  const int64_t n = hidden.size(0), k = hidden.size(1), vocab = weight.size(0), ldw = weight.stride(0);
  const bf16* h = hidden.data_ptr<bf16>();
  const bf16* w = weight.data_ptr<bf16>();
  const int64_t panels = (n + kTile - 1) / kTile, blocks = (vocab + kTile - 1) / kTile;
  const int64_t superblocks = (panels + kSuperPanels - 1) / kSuperPanels;
  // Few token superblocks (a short batch): split the vocabulary too, so that every thread has work.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t ranges = std::min(blocks, std::max<int64_t>(1, (threads + superblocks - 1) / superblocks));
  // Per vocabulary range, per token: max, sum_exp, sum_exp_shift.
  std::vector<float> part(static_cast<size_t>(ranges * 3 * n), 0.0f);
  for (int64_t r = 0; r < ranges; ++r) std::fill_n(part.begin() + r * 3 * n, n, -INFINITY);
  std::vector<float> target_logit(static_cast<size_t>(n), 0.0f);
  auto stats_of = [&](int64_t range, int64_t t0) {
    float* base = part.data() + range * 3 * n + t0;
    return gro::cpu::TokenStats{base, base + n, base + 2 * n};
  };
  at::parallel_for(0, superblocks * ranges, 1, [&](int64_t begin, int64_t end) {
    Tile tile;
    std::vector<bf16> packed(static_cast<size_t>(kSuperPanels * k * kTile));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t sb = item / ranges, range = item % ranges;
      const int64_t b0 = range * blocks / ranges, b1 = (range + 1) * blocks / ranges;
      const int64_t p0 = sb * kSuperPanels, p1 = std::min(panels, p0 + kSuperPanels);
      for (int64_t p = p0; p < p1; ++p) {
        pack_panel(h, hidden.stride(0), p * kTile, std::min(kTile, n - p * kTile), k,
                   packed.data() + (p - p0) * k * kTile);
      }
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t v0 = b * kTile, entries = std::min(kTile, vocab - v0);
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t t0 = p * kTile, tokens = std::min(kTile, n - t0);
          // A stored full panel is computed in place; a short one in the zero-padded tile, then copied, so that
          // the store's columns past `tokens` hold finite values for the backward's vector epilogue.
          const bool stored = b < store.blocks;
          float* z = stored && tokens == kTile ? store.tile(b, p) : tile.data;
          compute_tile(z, w, ldw, bias, packed.data() + (p - p0) * k * kTile, k, v0, entries, tokens);
          if (stored && z == tile.data) std::memcpy(store.tile(b, p), tile.data, sizeof(tile.data));
          for (int64_t j = 0; j < tokens; ++j) {
            const int64_t y = targets[t0 + j];
            if (y != ignore_index && y >= v0 && y < v0 + entries) {
              target_logit[t0 + j] = z[(y - v0) * kTile + j];
            }
          }
          gro::cpu::tile_stats_update(z, entries, tokens, inv_tau, stats_of(range, t0));
        }
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    const gro::cpu::TokenStats total = stats_of(0, begin);
    for (int64_t r = 1; r < ranges; ++r) gro::cpu::token_stats_merge(total, stats_of(r, begin), end - begin, inv_tau);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t y = targets[t], j = t - begin;
      const bool here = y != ignore_index && y >= 0 && y < vocab;
      gro::cpu::token_finish(total.max[j], total.sum_exp[j], total.sum_exp_shift[j], here ? &target_logit[t] : nullptr,
                             y == ignore_index, inv_tau, logprob + t, entropy != nullptr ? entropy + t : nullptr,
                             lse + t);
    }
  });
}

// A new fp32 logit store [blocks, panels, 64, 64] in transparent huge pages where the kernel gives them (Linux,
// THP "madvise" or "always"): up to hundreds of MiB of fresh memory, whose first touch costs about what the store
// saves (256 MiB here: 67 ms in 4 KiB pages, usually ~30 ms in 2 MiB pages; the Python side keeps the store and
// maps a new one only when a call needs more). Elsewhere, or if the mapping fails, a plain tensor.
at::Tensor new_logit_store(int64_t blocks, int64_t panels) {
  TORCH_CHECK(blocks >= 0 && panels >= 0, "gro_C: new_logit_store needs blocks, panels >= 0, got ", blocks, ", ",
              panels);
  const std::vector<int64_t> sizes{blocks, panels, kTile, kTile};
  const size_t bytes = static_cast<size_t>(blocks * panels * kTile * kTile) * sizeof(float);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes > 0) {
    void* ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr != MAP_FAILED) {
      madvise(ptr, bytes, MADV_HUGEPAGE);  // advice only: without THP the mapping is still valid memory
      return at::from_blob(ptr, sizes, [bytes](void* p) { munmap(p, bytes); }, at::TensorOptions().dtype(at::kFloat));
    }
  }
#endif
  return at::empty(sizes, at::TensorOptions().dtype(at::kFloat));
}

// The logit store of a batch of `rows` tokens: fp32 [blocks <= max_blocks, panels, 64, 64], contiguous (LogitStore).
LogitStore checked_store(const std::optional<at::Tensor>& logit_store, int64_t rows, int64_t max_blocks,
                         const char* op) {
  LogitStore store;
  if (!logit_store.has_value()) return store;
  const at::Tensor& t = *logit_store;
  const int64_t panels = (rows + kTile - 1) / kTile;
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 4 &&
                  t.size(0) <= max_blocks && t.size(1) == panels && t.size(2) == kTile && t.size(3) == kTile,
              "gro_C: ", op, " needs logit_store contiguous fp32 [<= ", max_blocks, ", ", panels, ", ", kTile, ", ",
              kTile, "] for ", rows, " tokens, got ", t.sizes(), " ", t.scalar_type());
  store.tiles = t.data_ptr<float>();
  store.blocks = t.size(0);
  store.panels = panels;
  return store;
}

void head_forward_lowp(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const at::Tensor& targets, double inv_temperature, int64_t ignore_index, bool vocab_shard,
                       const at::Tensor& logprob, const at::Tensor& lse, const std::optional<at::Tensor>& entropy,
                       const std::optional<at::Tensor>& logit_store) {
  check_head_operands(hidden, weight, bias, "head_forward_lowp");
  const int64_t n = hidden.size(0);
  const LogitStore store = checked_store(logit_store, n, (weight.size(0) + kTile - 1) / kTile, "head_forward_lowp");
  gro::check_vector(targets, n, at::kCPU, "targets", true);
  gro::check_vector(logprob, n, at::kCPU, "logprob");
  gro::check_vector(lse, n, at::kCPU, "lse");
  if (entropy.has_value()) gro::check_vector(*entropy, n, at::kCPU, "entropy");
  TORCH_CHECK(inv_temperature > 0.0, "gro_C: inv_temperature must be > 0, got ", inv_temperature);
  // On a vocabulary shard, ids outside [0, vocab) are other shards' tokens (no logit is read for them).
  if (!vocab_shard) gro::check_cpu_targets_in_range(targets, weight.size(0), ignore_index);
  if (n == 0) return;
  TORCH_CHECK(weight.size(0) > 0, "gro_C: head_forward_lowp needs a non-empty vocabulary");
  head_forward(hidden.contiguous(), weight, bias.has_value() ? bias->data_ptr<bf16>() : nullptr,
               targets.data_ptr<int64_t>(), static_cast<float>(inv_temperature), ignore_index,
               logprob.data_ptr<float>(), lse.data_ptr<float>(),
               entropy.has_value() ? entropy->data_ptr<float>() : nullptr, store);
}

at::Tensor pack_hidden_lowp(const at::Tensor& hidden) {
  check_head_operands(hidden, hidden, std::nullopt, "pack_hidden_lowp");
  return pack_hidden(hidden.contiguous());
}

struct GradInputs {
  const int64_t* targets;
  int64_t vocab_offset;
  int64_t ignore_index;
  float inv_tau;
  const float* lse;
  const float* entropy;
  const float* g_logprob;
  const float* g_entropy;
};

// store: the forward's tiles of the whole head (blocks numbered from the head's first entry); this call's block b is
// the head's block store_offset + b, read from the store when it holds it instead of recomputed.
void head_logit_grad(const at::Tensor& grad, const bf16* packed, int64_t n, const at::Tensor& weight,
                     const bf16* bias, const GradInputs& in, float* grad_bias, const LogitStore& store,
                     int64_t store_offset) {
  const int64_t k = weight.size(1), vocab = weight.size(0), ldw = weight.stride(0), ldg = grad.stride(0);
  const bf16* w = weight.data_ptr<bf16>();
  uint16_t* out = reinterpret_cast<uint16_t*>(grad.data_ptr<bf16>());
  const int64_t panels = (n + kTile - 1) / kTile, blocks = (vocab + kTile - 1) / kTile;
  std::vector<float> keep(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) keep[t] = in.targets[t] == in.ignore_index ? 0.0f : 1.0f;
  const int64_t groups = (blocks + kGroup - 1) / kGroup;
  std::vector<float> bias_sums(static_cast<size_t>(blocks * kTile), 0.0f);
  at::parallel_for(0, groups, 1, [&](int64_t gbegin, int64_t gend) {
    Tile tile;
    int32_t target_entry[kTile];
    for (int64_t grp = gbegin; grp < gend; ++grp) {
      const int64_t bb0 = grp * kGroup, bb1 = std::min(blocks, bb0 + kGroup);
      for (int64_t p = 0; p < panels; ++p) {
      for (int64_t b = bb0; b < bb1; ++b) {
        float* bias_sum = bias_sums.data() + b * kTile;
        const int64_t v0 = b * kTile, entries = std::min(kTile, vocab - v0);
        const int64_t t0 = p * kTile, tokens = std::min(kTile, n - t0);
        // A stored tile is consumed in place (the bias gradient's pass overwrites it with dLoss/dz).
        float* z = store_offset + b < store.blocks ? store.tile(store_offset + b, p) : tile.data;
        if (z == tile.data) compute_tile(z, w, ldw, bias, packed + p * k * kTile, k, v0, entries, tokens);
        for (int64_t j = 0; j < tokens; ++j) {
          // The one-hot term's row: a kept token whose target (a global id) falls in this block.
          const int64_t y = in.targets[t0 + j] - in.vocab_offset - v0;
          target_entry[j] = keep[t0 + j] != 0.0f && y >= 0 && y < entries ? static_cast<int32_t>(y) : -1;
        }
        const gro::cpu::TokenGradInputs inputs{in.lse + t0, keep.data() + t0, in.g_logprob + t0, target_entry,
                                               in.g_entropy != nullptr ? in.g_entropy + t0 : nullptr,
                                               in.entropy != nullptr ? in.entropy + t0 : nullptr};
        gro::cpu::tile_logit_grad_bf16(z, entries, tokens, in.inv_tau, inputs, out + v0 * ldg + t0, ldg,
                                       grad_bias != nullptr);
        if (grad_bias != nullptr) {
          for (int64_t i = 0; i < entries; ++i) {
            const float* row = z + i * kTile;
            float s = 0.0f;
            for (int64_t j = 0; j < tokens; ++j) s += row[j];
            bias_sum[i] += s;
          }
        }
      }
      }
      if (grad_bias != nullptr) {
        for (int64_t b = bb0; b < bb1; ++b) {
          const int64_t v0 = b * kTile, entries = std::min(kTile, vocab - v0);
          for (int64_t i = 0; i < entries; ++i) grad_bias[v0 + i] += bias_sums[b * kTile + i];
        }
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
}

void head_logit_grad_lowp(const at::Tensor& grad, const at::Tensor& packed_hidden, int64_t rows,
                          const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                          int64_t vocab_offset, double inv_temperature, int64_t ignore_index, const at::Tensor& lse,
                          const std::optional<at::Tensor>& entropy, const at::Tensor& grad_logprob,
                          const std::optional<at::Tensor>& grad_entropy, const std::optional<at::Tensor>& grad_bias,
                          const std::optional<at::Tensor>& logit_store, int64_t store_offset) {
  check_head_operands(weight, weight, bias, "head_logit_grad_lowp_");
  const int64_t k = weight.size(1), vocab = weight.size(0);
  // The store holds blocks of the whole head, whose tile this call's weight is (blocks past it are never read).
  const LogitStore store = checked_store(logit_store, rows, INT64_MAX, "head_logit_grad_lowp_");
  TORCH_CHECK(store_offset >= 0, "gro_C: head_logit_grad_lowp_ needs store_offset >= 0, got ", store_offset);
  const int64_t panels = (rows + kTile - 1) / kTile;
  TORCH_CHECK(packed_hidden.scalar_type() == at::kBFloat16 && packed_hidden.is_contiguous() &&
                  packed_hidden.dim() == 3 && packed_hidden.size(0) == panels && packed_hidden.size(1) == k &&
                  packed_hidden.size(2) == kTile,
              "gro_C: head_logit_grad_lowp_ needs packed_hidden from pack_hidden_lowp of [", rows, ", ", k,
              "] hidden, got ", packed_hidden.sizes(), " ", packed_hidden.scalar_type());
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kBFloat16 && grad.dim() == 2 &&
                  grad.size(0) == vocab && grad.size(1) == rows && (rows <= 1 || grad.stride(1) == 1) &&
                  (vocab <= 1 || grad.stride(0) >= rows),
              "gro_C: head_logit_grad_lowp_ needs a CPU bfloat16 grad [", vocab, ", ", rows,
              "] with contiguous rows, got ", grad.sizes(), " strides ", grad.strides(), " ", grad.scalar_type());
  gro::check_vector(targets, rows, at::kCPU, "targets", true);
  gro::check_vector(lse, rows, at::kCPU, "lse");
  gro::check_vector(grad_logprob, rows, at::kCPU, "grad_logprob");
  TORCH_CHECK(entropy.has_value() == grad_entropy.has_value(), "gro_C: grad_entropy and entropy must be given together");
  if (entropy.has_value()) {
    gro::check_vector(*entropy, rows, at::kCPU, "entropy");
    gro::check_vector(*grad_entropy, rows, at::kCPU, "grad_entropy");
  }
  if (grad_bias.has_value()) gro::check_vector(*grad_bias, vocab, at::kCPU, "grad_bias");
  TORCH_CHECK(inv_temperature > 0.0, "gro_C: inv_temperature must be > 0, got ", inv_temperature);
  if (rows == 0 || vocab == 0) return;
  const GradInputs in{targets.data_ptr<int64_t>(), vocab_offset, ignore_index, static_cast<float>(inv_temperature),
                      lse.data_ptr<float>(), entropy.has_value() ? entropy->data_ptr<float>() : nullptr,
                      grad_logprob.data_ptr<float>(),
                      grad_entropy.has_value() ? grad_entropy->data_ptr<float>() : nullptr};
  head_logit_grad(grad, packed_hidden.data_ptr<bf16>(), rows, weight,
                  bias.has_value() ? bias->data_ptr<bf16>() : nullptr, in,
                  grad_bias.has_value() ? grad_bias->data_ptr<float>() : nullptr, store, store_offset);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gro_C, m) {
  // Fused bf16 head (CPU): whether this CPU's micro-kernel takes dtype ("bfloat16"; "float16" is always false).
  m.def("fused_head_available(str dtype) -> bool", &fused_head_available);
  // lse, target logprob and (optionally) entropy of softmax((hidden @ weight^T + bias) / tau) per token, the
  // logits never stored (the contract of logprob_forward, vocab_shard included), except the fp32 tiles of the
  // first vocabulary blocks into logit_store when given (see LogitStore).
  m.def(
      "head_forward_lowp(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, float inv_temperature, "
      "int ignore_index, bool vocab_shard, Tensor(a!) logprob, Tensor(b!) lse, Tensor(c!)? entropy, "
      "Tensor(d!)? logit_store=None) -> ()");
  // hidden [N, H] as the VNNI panels head_logit_grad_lowp_ reads (pack once, use for every vocabulary tile).
  m.def("pack_hidden_lowp(Tensor hidden) -> Tensor");
  // An uninitialized fp32 logit store [blocks, panels, 64, 64] for head_forward_lowp (in huge pages where possible).
  m.def("new_logit_store(int blocks, int panels) -> Tensor", &new_logit_store);
  // grad [Vt, rows] (bf16, vocab-major) <- dLoss/dz of the vocabulary tile `weight` = W[offset : offset + Vt]
  // (the contract of logit_grad_ with vocab_shard: lse / entropy of the full vocabulary; targets are ids of W,
  // vocab_offset the tile's first one); grad_bias [Vt] fp32 += its column sums. logit_store: the forward's, whose
  // block store_offset is this tile's first block; the tiles it holds are read (and overwritten), not recomputed.
  m.def(
      "head_logit_grad_lowp_(Tensor(a!) grad, Tensor packed_hidden, int rows, Tensor weight, Tensor? bias, "
      "Tensor targets, int vocab_offset, float inv_temperature, int ignore_index, Tensor lse, Tensor? entropy, "
      "Tensor grad_logprob, Tensor? grad_entropy, Tensor(b!)? grad_bias, Tensor(c!)? logit_store=None, "
      "int store_offset=0) -> ()");
}

TORCH_LIBRARY_IMPL(gro_C, CPU, m) {
  m.impl("head_forward_lowp", &head_forward_lowp);
  m.impl("pack_hidden_lowp", &pack_hidden_lowp);
  m.impl("head_logit_grad_lowp_", &head_logit_grad_lowp);
}
