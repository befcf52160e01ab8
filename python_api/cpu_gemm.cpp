// Low-precision GEMM with an fp32 result on CPU: out (+)= a @ b, a and b bf16 (or fp16), out fp32.
//
// The chunked backend needs it twice: the logits of a bf16 head must not be rounded to bf16 before
// the softmax (a logit of 20 is off by 0.06 there), and dweight accumulates over chunks in fp32.
// torch's CPU matmul writes the input dtype only (mm with out_dtype is CUDA-only), so this calls the
// oneDNN batch-reduce GEMM micro-kernel ATen exports (at::native::cpublas::brgemm: AMX or AVX-512
// BF16 tiles, fp32 accumulation and output) over blocks of the result, B packed to the VNNI layout
// the micro-kernel wants. One block of out is one micro-kernel call over the whole K; threads split
// the rows of out.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

// MKL's mixed-precision GEMMs, which torch's CPU library carries when it is built with MKL (weak: null
// otherwise). The fallback where the micro-kernel has no tiles for a dtype (fp16 without AMX-FP16).
extern "C" {
__attribute__((weak)) void cblas_gemm_f16f16f32(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                                                const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                                float* c, int ldc);
__attribute__((weak)) void cblas_gemm_bf16bf16f32(int layout, int trans_a, int trans_b, int m, int n, int k,
                                                  float alpha, const uint16_t* a, int lda, const uint16_t* b, int ldb,
                                                  float beta, float* c, int ldc);
}

namespace {

constexpr int64_t kBlockM = 64;  // rows of out per micro-kernel call
constexpr int64_t kBlockN = 64;  // columns of out per call: the packed B panel width
constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;

bool has_micro_kernel(c10::ScalarType dtype) { return at::native::cpublas::could_pack(dtype); }

bool has_mkl(c10::ScalarType dtype) {
  return dtype == at::kBFloat16 ? cblas_gemm_bf16bf16f32 != nullptr : cblas_gemm_f16f16f32 != nullptr;
}

bool lowp_gemm_available(c10::string_view dtype) {
  if (dtype != "bfloat16" && dtype != "float16") return false;
  const c10::ScalarType type = dtype == "bfloat16" ? at::kBFloat16 : at::kHalf;
  return has_micro_kernel(type) || has_mkl(type);
}

bool is_transposed(const at::Tensor& t) { return t.stride(1) != 1 && t.stride(0) == 1; }

// A matrix operand as MKL takes it: (row-major data, its leading dimension, transposed?).
struct MklOperand {
  at::Tensor data;
  int ld;
  int trans;
};

MklOperand mkl_operand(const at::Tensor& t) {
  if (is_transposed(t)) return {t, static_cast<int>(t.stride(1)), kCblasTrans};
  const at::Tensor rows = t.stride(1) == 1 ? t : t.contiguous();
  return {rows, static_cast<int>(rows.stride(0)), kCblasNoTrans};
}

// MKL path: a and b may each be row-major or a transposed view of a row-major matrix.
void mkl_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const MklOperand ma = mkl_operand(a), mb = mkl_operand(b);
  const auto gemm = a.scalar_type() == at::kBFloat16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  gemm(kCblasRowMajor, ma.trans, mb.trans, static_cast<int>(out.size(0)), static_cast<int>(out.size(1)),
       static_cast<int>(a.size(1)), 1.0f, static_cast<const uint16_t*>(ma.data.data_ptr()), ma.ld,
       static_cast<const uint16_t*>(mb.data.data_ptr()), mb.ld, accumulate ? 1.0f : 0.0f, out.data_ptr<float>(),
       static_cast<int>(out.stride(0)));
}

template <typename T>
void blocked_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, int64_t k_even, bool accumulate) {
  // k_even: the K columns of a / rows of b to use (even; the caller adds the rest)
  const int64_t m = out.size(0), n = out.size(1);
  const int64_t panels = (n + kBlockN - 1) / kBlockN;
  // B [K, N] as column panels of kBlockN, each packed to VNNI pairs of K: the layout brgemm reads.
  at::Tensor packed = at::empty({panels, k_even, kBlockN}, b.options());
  const at::Tensor b_rows = b.narrow(0, 0, k_even).contiguous();
  const c10::ScalarType dtype = b.scalar_type();
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t width = std::min(kBlockN, n - p * kBlockN);
    at::native::cpublas::pack(k_even, width, n, kBlockN, dtype, dtype, b_rows.data_ptr<T>() + p * kBlockN,
                              packed.data_ptr<T>() + p * k_even * kBlockN);
  }
  const T* a_ptr = a.data_ptr<T>();
  const T* packed_ptr = packed.data_ptr<T>();
  float* out_ptr = out.data_ptr<float>();
  const int64_t lda = a.stride(0), ldc = out.stride(0);
  at::parallel_for(0, (m + kBlockM - 1) / kBlockM, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t m0 = blk * kBlockM, rows = std::min(kBlockM, m - m0);
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t width = std::min(kBlockN, n - p * kBlockN);
        at::native::cpublas::brgemm(rows, width, k_even, lda, kBlockN, ldc, accumulate, a_ptr + m0 * lda,
                                    packed_ptr + p * k_even * kBlockN, out_ptr + m0 * ldc + p * kBlockN, true);
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
}

// out [M, N] fp32 (unit column stride) = a [M, K] @ b [K, N] (+ out when accumulate). a and b share a
// 16-bit float dtype; a has unit column stride. The micro-kernel gets K rounded down to a multiple of 4 (it takes
// K in VNNI pairs, and a K of 2 mod 4 runs 5-8x slower: 576 ms vs 72 ms for K 3539 vs 3540, M 4736, N 1024, the
// dweight GEMM of a ragged batch); the last K % 4 columns go in as an fp32 update.
void mm_lowp_f32(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && out.device().is_cpu(), "gro_C: mm_lowp_f32_ is CPU-only");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2 && a.size(1) == b.size(0) && out.size(0) == a.size(0) &&
                  out.size(1) == b.size(1),
              "gro_C: mm_lowp_f32_ needs out [M, N], a [M, K], b [K, N]; got out ", out.sizes(), ", a ", a.sizes(),
              ", b ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                  (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf),
              "gro_C: mm_lowp_f32_ needs a and b both bfloat16 or both float16, got ", a.scalar_type(), " and ",
              b.scalar_type());
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.stride(1) == 1, "gro_C: mm_lowp_f32_ needs an fp32 out with "
              "unit column stride");
  // The micro-kernel reads row-major A and packs row-major B. A transposed B no larger than A (the chunk's
  // hidden rows h^T) is copied before packing, which costs little; a transposed A, or a transposed B
  // larger than A (the head's W^T), would need a large transposing copy: MKL reads those as they are.
  const bool needs_mkl = is_transposed(a) || (is_transposed(b) && b.numel() > a.numel());
  if (!has_micro_kernel(a.scalar_type()) || (needs_mkl && has_mkl(a.scalar_type()))) {
    TORCH_CHECK(has_mkl(a.scalar_type()), "gro_C: no ", a.scalar_type(), " GEMM with an fp32 result on this CPU");
    mkl_gemm(a, b, out, accumulate);
    return;
  }
  TORCH_CHECK(a.stride(1) == 1, "gro_C: mm_lowp_f32_ needs a with unit column stride (no MKL on this CPU)");
  const int64_t k = a.size(1), k_main = k - (k % 4);
  if (k_main > 0) {
    if (a.scalar_type() == at::kBFloat16) {
      blocked_gemm<at::BFloat16>(a, b, out, k_main, accumulate);
    } else {
      blocked_gemm<at::Half>(a, b, out, k_main, accumulate);
    }
  } else if (!accumulate) {
    out.zero_();
  }
  if (k_main < k) out.addmm_(a.narrow(1, k_main, k - k_main).to(at::kFloat), b.narrow(0, k_main, k - k_main).to(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gro_C, m) {
  // out (+)= a @ b with 16-bit float a, b and an fp32 out (CPU). lowp_gemm_available: whether this
  // CPU's oneDNN micro-kernel takes that dtype ("bfloat16" | "float16").
  m.def("mm_lowp_f32_(Tensor(a!) out, Tensor a, Tensor b, bool accumulate) -> ()");
  m.def("lowp_gemm_available(str dtype) -> bool", &lowp_gemm_available);
}

TORCH_LIBRARY_IMPL(gro_C, CPU, m) { m.impl("mm_lowp_f32_", &mm_lowp_f32); }
