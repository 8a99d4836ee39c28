// Fused causal self-attention for XLA:CPU (forward and backward), called through the XLA FFI.
//
// XLA:CPU runs attention as many small batched dots (single-threaded in YNNPACK) plus separate
// softmax passes; PyTorch's CPU flash-attention kernel is ~2x faster at [16, 256, 6, 64]. This kernel
// works through one (batch, kv_head) pair at a time, in blocks of 64 query rows whose scores [64, length]
// stay in L2: S = QK^T, the softmax and PV, with the masked upper triangle skipped, and the backward
// recomputing P from the saved log-sum-exp.
// Tasks (batch x kv_heads) run on XLA's intra-op thread pool; each task owns its outputs, so results do
// not depend on scheduling. Compiled on the user's machine (-march=native): see cpu_attention.py.
//
// Shapes: q [batch, length, heads, head_dim], k/v [batch, length, kv_heads, head_dim], segment_ids
// [batch, length] (int32; packed documents do not see each other), lse [batch, heads, length].
// Constraints (checked in Python): length % 16 == 0, head_dim % 16 == 0, heads % kv_heads == 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
constexpr int MR = W == 16 ? 8 : 4;  // rows per micro-tile: 16 or 8 accumulator registers
constexpr int NR = 2 * W;   // columns per micro-tile
constexpr int kRowBlock = 64;  // query rows per block (a multiple of MR and of 16)
// Leading dimension of the [*, length] scratch: rows 4 KB apart would share L1/L2 cache sets.
inline int padded(int length) { return length + 16; }

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return x - vf{}; }  // a broadcast (x + 0.0f would cost an add: -0.0f)

// exp on a vector (Cephes-style: 2^n * p(r), |rel err| < 2e-7); inputs below -87 (and -inf) give 0.
inline vf vexp(vf x) {
  vi tiny = x < splat(-87.0f);
  x = x < splat(-87.0f) ? splat(-87.0f) : (x > splat(88.0f) ? splat(88.0f) : x);
  vf n = x * splat(1.44269504088896341f);
  vi ni = __builtin_convertvector(n + (n < splat(0.0f) ? splat(-0.5f) : splat(0.5f)), vi);  // round
  vf nf = __builtin_convertvector(ni, vf);
  vf r = x - nf * splat(0.693359375f) + nf * splat(2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  vf out = p * (vf)((ni + 127) << 23);
  return (vf)((vi)out & ~tiny);
}

// Per-thread scratch, reused across calls (large buffers would otherwise be mmap'ed and page-faulted on
// every call under glibc malloc).
float* scratch(size_t floats) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

// C[M, N] (+)= A[M, K] @ B[K, N], row-major, M % MR == 0, N % W == 0. `mode` limits the work for a
// causal (lower-triangular) operand, per row tile starting at i0, for a block of query rows starting
// at row `first` (the rows of A for kCols and kLowerK, the k of A for kUpperK):
//   kCols: columns < first + i0 + MR (rounded up to W), C's other entries untouched;
//   kLowerK: k < first + i0 + MR (A is lower-triangular); kUpperK: k >= i0 - first (A^T is upper-triangular).
// Every read of a score block stays inside what kCols computed, so those buffers need no zeroing.
enum Mode { kCols, kLowerK, kUpperK };

// Columns of a causal row i that gemm(kCols) computes: up to its row tile's end, rounded up to a vector.
inline int computed_columns(int i, int T) { return std::min(T, ((i / MR) * MR + MR + W - 1) / W * W); }

template <int NV, bool TA>
inline void tile(int k0, int k1, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                 bool accumulate) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? load(C + r * ldc + v * W) : vf{};
  for (int k = k0; k < k1; ++k) {
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * W);
    for (int r = 0; r < MR; ++r) {
      vf a = splat(TA ? A[k * lda + r] : A[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, acc[r][v]);
}

// TA: A is given transposed, as [K, M] row-major (C = A^T @ B), so no transposed copy is needed.
template <bool TA = false>
void gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
          bool accumulate, Mode mode, int first) {
  for (int i0 = 0; i0 < M; i0 += MR) {
    int n1 = N, k0 = 0, k1 = K;
    if (mode == kCols) n1 = computed_columns(first + i0, N);
    if (mode == kLowerK) k1 = std::min(K, first + i0 + MR);
    if (mode == kUpperK) k0 = std::max(0, i0 - first);
    const float* a = TA ? A + i0 : A + i0 * lda;
    float* c = C + i0 * ldc;
    int j = 0;
    for (; j + NR <= n1; j += NR) tile<2, TA>(k0, k1, a, lda, B + j, ldb, c + j, ldc, accumulate);
    for (; j < n1; j += W) tile<1, TA>(k0, k1, a, lda, B + j, ldb, c + j, ldc, accumulate);
  }
}

// dst[cols, rows] = src[rows, cols]^T (dst leading dim ldd)
void transpose(int rows, int cols, const float* src, int lds, float* dst, int ldd) {
  constexpr int B = 16;
  for (int i0 = 0; i0 < rows; i0 += B)
    for (int j0 = 0; j0 < cols; j0 += B)
      for (int i = i0; i < std::min(rows, i0 + B); ++i)
        for (int j = j0; j < std::min(cols, j0 + B); ++j) dst[j * ldd + i] = src[i * lds + j];
}

struct Dims {
  int batch, length, heads, kv_heads, head_dim;
  int groups() const { return heads / kv_heads; }
};

// Gather head `h` of x [batch, length, n_heads, head_dim] for batch b into dst [length, head_dim].
void gather(const float* x, int b, int h, int n_heads, const Dims& d, float* dst) {
  const int64_t row = int64_t(n_heads) * d.head_dim;
  const float* src = x + int64_t(b) * d.length * row + int64_t(h) * d.head_dim;
  for (int t = 0; t < d.length; ++t) std::memcpy(dst + t * d.head_dim, src + t * row, d.head_dim * 4);
}

void scatter(const float* src, int b, int h, int n_heads, const Dims& d, float* x) {
  const int64_t row = int64_t(n_heads) * d.head_dim;
  float* dst = x + int64_t(b) * d.length * row + int64_t(h) * d.head_dim;
  for (int t = 0; t < d.length; ++t) std::memcpy(dst + t * row, src + t * d.head_dim, d.head_dim * 4);
}

inline vi iload(const int32_t* p) { vi v; std::memcpy(&v, p, sizeof v); return v; }
inline float hsum(vf v) { float s = 0; for (int i = 0; i < W; ++i) s += v[i]; return s; }

// For query rows first..first+rows-1 (row r of S, leading dim ld): P[i, :] = masked softmax of scale * S[i, :]
// (or exp(scale * S - lse) when lse_in is given), zero where masked (j > i or another segment), over the
// columns gemm(kCols) computed. Writes lse when lse_out. lse_in/lse_out are indexed by i.
void softmax_rows(int first, int rows, int T, int ld, float scale, const int32_t* seg, float* S,
                  const float* lse_in, float* lse_out) {
  vi lane;
  for (int v = 0; v < W; ++v) lane[v] = v;
  for (int i = first; i < first + rows; ++i) {
    float* s = S + int64_t(i - first) * ld;
    const int n = computed_columns(i, T);
    const vi own = vi{} + seg[i];
    vf m = splat(-INFINITY);
    for (int j = 0; j < n; j += W) {
      vi valid = (iload(seg + j) == own) & (lane + j <= i);
      vf x = valid ? load(s + j) * scale : splat(-INFINITY);
      store(s + j, x);
      m = m > x ? m : x;
    }
    float shift = m[0];
    for (int v = 1; v < W; ++v) shift = std::max(shift, m[v]);
    if (lse_in) shift = lse_in[i];
    vf sum = vf{};
    for (int j = 0; j < n; j += W) {
      vf e = vexp(load(s + j) - shift);
      store(s + j, e);
      sum += e;
    }
    if (!lse_in) {
      const float l = hsum(sum);
      const vf inv = splat(1.0f / l);
      for (int j = 0; j < n; j += W) store(s + j, load(s + j) * inv);
      if (lse_out) lse_out[i] = shift + std::log(l);
    }
  }
}

Dims dims_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Dims{int(qd[0]), int(qd[1]), int(qd[2]), int(kd[2]), int(qd[3])};
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg, float scale,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  const Dims d = dims_of(q, k);
  const int T = d.length, D = d.head_dim, ld = padded(T);
  jaxllm::parallel_for(pool, d.batch * d.kv_heads, [&](int task) {
    const int b = task / d.kv_heads, kh = task % d.kv_heads;
    float* buf = scratch(4 * size_t(T) * D + size_t(D + kRowBlock) * ld);
    float *Qh = buf, *Vh = Qh + T * D, *Oh = Vh + T * D, *Kh = Oh + T * D, *Kt = Kh + T * D, *S = Kt + D * ld;
    gather(k.typed_data(), b, kh, d.kv_heads, d, Kh);
    transpose(T, D, Kh, D, Kt, ld);
    gather(v.typed_data(), b, kh, d.kv_heads, d, Vh);
    const int32_t* sg = seg.typed_data() + int64_t(b) * T;
    for (int g = 0; g < d.groups(); ++g) {
      const int h = kh * d.groups() + g;
      gather(q.typed_data(), b, h, d.heads, d, Qh);
      float* lse_h = lse->typed_data() + (int64_t(b) * d.heads + h) * T;
      for (int i0 = 0; i0 < T; i0 += kRowBlock) {
        const int rows = std::min(kRowBlock, T - i0), cols = computed_columns(i0 + rows - 1, T);
        gemm(rows, cols, D, Qh + i0 * D, D, Kt, ld, S, ld, false, kCols, i0);
        softmax_rows(i0, rows, T, ld, scale, sg, S, nullptr, lse_h);
        gemm(rows, D, cols, S, ld, Vh, D, Oh + i0 * D, D, false, kLowerK, i0);
      }
      scatter(Oh, b, h, d.heads, d, out->typed_data());
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg, ffi::Buffer<ffi::F32> o,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  const Dims d = dims_of(q, k);
  const int T = d.length, D = d.head_dim, ld = padded(T);
  const int64_t block = int64_t(kRowBlock) * ld;
  jaxllm::parallel_for(pool, d.batch * d.kv_heads, [&](int task) {
    const int b = task / d.kv_heads, kh = task % d.kv_heads;
    float* buf = scratch(8 * size_t(T) * D + 2 * size_t(D) * ld + 2 * block);
    float *Qh = buf, *Kh = Qh + T * D, *Oh = Kh + T * D, *dOh = Oh + T * D, *dQh = dOh + T * D,
          *dKh = dQh + T * D, *dVh = dKh + T * D, *tmp = dVh + T * D, *Kt = tmp + T * D, *Vt = Kt + D * ld,
          *P = Vt + D * ld, *dS = P + block;
    std::memset(dKh, 0, sizeof(float) * 2 * T * D);  // dKh, dVh
    gather(k.typed_data(), b, kh, d.kv_heads, d, Kh);
    transpose(T, D, Kh, D, Kt, ld);
    gather(v.typed_data(), b, kh, d.kv_heads, d, tmp);
    transpose(T, D, tmp, D, Vt, ld);
    const int32_t* sg = seg.typed_data() + int64_t(b) * T;
    for (int g = 0; g < d.groups(); ++g) {
      const int h = kh * d.groups() + g;
      gather(q.typed_data(), b, h, d.heads, d, Qh);
      gather(o.typed_data(), b, h, d.heads, d, Oh);
      gather(dout.typed_data(), b, h, d.heads, d, dOh);
      const float* lse_h = lse.typed_data() + (int64_t(b) * d.heads + h) * T;
      for (int i0 = 0; i0 < T; i0 += kRowBlock) {
        const int rows = std::min(kRowBlock, T - i0), cols = computed_columns(i0 + rows - 1, T);
        const float *Qb = Qh + i0 * D, *dOb = dOh + i0 * D;
        gemm(rows, cols, D, Qb, D, Kt, ld, P, ld, false, kCols, i0);
        softmax_rows(i0, rows, T, ld, scale, sg, P, lse_h, nullptr);
        gemm(rows, cols, D, dOb, D, Vt, ld, dS, ld, false, kCols, i0);  // dP
        for (int i = i0; i < i0 + rows; ++i) {  // dS = P * (dP - rowsum(dO * O)) * scale
          vf acc = vf{};
          for (int e = 0; e < D; e += W) acc += load(dOh + i * D + e) * load(Oh + i * D + e);
          const vf delta = splat(hsum(acc));
          const float* p = P + int64_t(i - i0) * ld;
          float* s = dS + int64_t(i - i0) * ld;
          for (int j = 0, n = computed_columns(i, T); j < n; j += W)
            store(s + j, load(p + j) * (load(s + j) - delta) * scale);
        }
        gemm(rows, D, cols, dS, ld, Kh, D, dQh + i0 * D, D, false, kLowerK, i0);
        gemm<true>(cols, D, rows, P, ld, dOb, D, dVh, D, true, kUpperK, i0);  // dV += P^T dO
        gemm<true>(cols, D, rows, dS, ld, Qb, D, dKh, D, true, kUpperK, i0);  // dK += dS^T Q
      }
      scatter(dQh, b, h, d.heads, d, dq->typed_data());
    }
    scatter(dKh, b, kh, d.kv_heads, d, dk->typed_data());
    scatter(dVh, b, kh, d.kv_heads, d, dv->typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
