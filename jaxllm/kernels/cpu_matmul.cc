// Float32 matmul for XLA:CPU through a BLAS sgemm (MKL's, handed over by blas_matmul.py), called
// through the XLA FFI. On these CPUs MKL's sgemm runs the model's shapes 10-60% faster than XLA's
// YNNPACK dots (the weight gradients x^T g most). BLAS runs single-threaded: the output is split into
// one block per thread of XLA's intra-op pool, so BLAS threads never compete with XLA's, and the split
// depends only on the shapes (results are the same run to run).
#include <algorithm>
#include <cstdint>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
typedef void (*Sgemm)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                      int);
Sgemm sgemm = nullptr;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// c[M, N] = op(a) @ op(b): a is [M, K] ([K, M] when trans_a), b is [K, N] ([N, K] when trans_b).
ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, bool trans_a,
                  bool trans_b, ffi::ResultBuffer<ffi::F32> c) {
  if (sgemm == nullptr) return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "jaxllm: no sgemm was set");
  auto ad = a.dimensions(), bd = b.dimensions();
  const int M = trans_a ? ad[1] : ad[0], K = trans_a ? ad[0] : ad[1], N = trans_b ? bd[0] : bd[1];
  const int lda = ad[1], ldb = bd[1];
  const float *A = a.typed_data(), *B = b.typed_data();
  float* C = c->typed_data();
  const int ta = trans_a ? kTrans : kNoTrans, tb = trans_b ? kTrans : kNoTrans;
  const int parts = int(std::max<int64_t>(1, pool.num_threads()));
  // Split the longer output side into blocks of whole 16-float (64-byte) vectors.
  const bool by_rows = M >= N;
  const int side = by_rows ? M : N, block = ((side + parts - 1) / parts + 15) / 16 * 16;
  jaxllm::parallel_for(pool, (side + block - 1) / block, [&](int p) {
    const int start = p * block, len = std::min(side, start + block) - start;
    if (by_rows)
      sgemm(kRowMajor, ta, tb, len, N, K, 1.0f, trans_a ? A + start : A + int64_t(start) * lda, lda, B, ldb, 0.0f,
            C + int64_t(start) * N, N);
    else
      sgemm(kRowMajor, ta, tb, M, len, K, 1.0f, A, lda, trans_b ? B + int64_t(start) * ldb : B + start, ldb, 0.0f,
            C + start, N);
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void jaxllm_set_sgemm(void* function) { sgemm = reinterpret_cast<Sgemm>(function); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b")
                                  .Ret<ffi::Buffer<ffi::F32>>());
