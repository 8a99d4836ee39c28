// Float32 matmul for XLA:CPU through a BLAS sgemm (MKL or OpenBLAS, chosen per CPU in blas_matmul.py), called
// through the XLA FFI. On the machines measured here both run the model's shapes faster than XLA's YNNPACK
// dots; on AMD EPYC OpenBLAS's kernels run them ~1.1-1.7x faster than MKL's.
// MKL is linked in statically with its symbols hidden, so another MKL in the process (PyTorch's) and ours
// never bind to each other's internals: a shared libmkl_rt loaded with its sequential layer made PyTorch's
// matmuls single-threaded. OpenBLAS (PyPI's scipy-openblas32) has its symbols prefixed, as NumPy's does.
// Each call is single-threaded: the output is split into one block per thread of XLA's intra-op pool, and
// the split depends only on the shapes (results are the same run to run).
#include <algorithm>
#include <cstdint>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#ifdef JAXLLM_OPENBLAS
extern "C" void scipy_cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                                  const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
extern "C" void scipy_openblas_set_num_threads(int);
#define SGEMM scipy_cblas_sgemm
static const bool single_threaded = (scipy_openblas_set_num_threads(1), true);
#else
extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
#define SGEMM cblas_sgemm
#endif

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
      SGEMM(kRowMajor, ta, tb, len, N, K, 1.0f, trans_a ? A + start : A + int64_t(start) * lda, lda, B, ldb, 0.0f,
            C + int64_t(start) * N, N);
    else
      SGEMM(kRowMajor, ta, tb, M, len, K, 1.0f, A, lda, trans_b ? B + int64_t(start) * ldb : B + start, ldb, 0.0f,
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
