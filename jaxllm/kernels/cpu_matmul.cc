// Float32 matmul for XLA:CPU through MKL's sgemm, called through the XLA FFI. On these CPUs MKL runs the
// model's shapes 10-60% faster than XLA's YNNPACK dots (the weight gradients x^T g most).
// MKL is linked in statically with its symbols hidden (blas_matmul.py), so another MKL in the process
// (PyTorch's) and ours never bind to each other's internals: a shared libmkl_rt loaded with its
// sequential layer made PyTorch's matmuls single-threaded. MKL runs sequentially: the output is split
// into one block per thread of XLA's intra-op pool, and the split depends only on the shapes (results
// are the same run to run).
#include <algorithm>
#include <cstdint>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// c[M, N] = op(a) @ op(b): a is [M, K] ([K, M] when trans_a), b is [K, N] ([N, K] when trans_b).
ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, bool trans_a,
                  bool trans_b, ffi::ResultBuffer<ffi::F32> c) {
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
      cblas_sgemm(kRowMajor, ta, tb, len, N, K, 1.0f, trans_a ? A + start : A + int64_t(start) * lda, lda, B, ldb, 0.0f,
            C + int64_t(start) * N, N);
    else
      cblas_sgemm(kRowMajor, ta, tb, M, len, K, 1.0f, A, lda, trans_b ? B + int64_t(start) * ldb : B + start, ldb, 0.0f,
            C + start, N);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b")
                                  .Ret<ffi::Buffer<ffi::F32>>());
