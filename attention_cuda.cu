// Fused attention forward, O = softmax(scale * Q K^T [+ causal mask]) V, in one CUDA kernel,
// called from JAX through the XLA FFI (attention_cuda.py builds and registers it).
//
// Layout: q, k, v, o are [B, T, H, K] (batch, time, head, head dim), as model.py holds them;
// lse is [B, H, T] float32 (natural-log logsumexp of each score row, for a later backward).
//
// The idea (flash attention): the T x T score matrix never exists in global memory. One block
// owns a tile of kBlockM = 64 query rows of one (batch, head). It keeps that Q tile on chip and
// streams the keys and values past it kBlockN = 64 rows at a time:
//
//   for each K/V tile:   S = Q K_tile^T           (64 x 64 scores, in registers)
//                        P = exp(S - running max) (unnormalised probabilities)
//                        O = O * correction + P V_tile
//   finally              O = O / running sum
//
// "Online softmax": softmax needs the row max (for stability) and the row sum (to normalise),
// both of which depend on every key. We keep a running max m and running sum l per row. When a
// new tile raises the max from m_old to m_new, everything accumulated so far was computed with
// exp(s - m_old); multiplying it by exp(m_old - m_new) turns it into exp(s - m_new). So O and l
// are rescaled by that factor before the new tile is added, and O is divided by l once at the end.
// Exponentials are done in base 2 (exp2f is one hardware instruction): scores are multiplied by
// scale * log2(e) up front, and m is kept in those units.
//
// Work split: each of the 4 warps of a block owns 16 of the 64 query rows, so a warp computes its
// 16 x 64 score strip and its 16 x K output strip by itself; the only shared data are the Q, K
// and V tiles in shared memory, and a row's statistics move between lanes by register shuffles.
// The matrix products use tensor cores through the PTX instruction mma.sync.m16n8k16 (bf16
// inputs, fp32 accumulation); fragments are read from shared memory with ldmatrix.
// fp32 inputs run the same code with each value split into two bf16 halves, x = hi + lo, and
// products formed as hi*hi + hi*lo + lo*hi ("3xBF16"), which keeps ~16 mantissa bits.
// Memory and maths overlap: while a warp computes S from the K tile, the V tile is in flight
// (cp.async), and while it computes P V, the next K tile is.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <string>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlockM = 64;   // query rows per block (16 per warp)
constexpr int kBlockN = 64;   // key/value rows per streamed tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

// ---------------------------------------------------------------------------------------------
// Tensor-core fragments. mma.sync.m16n8k16 multiplies a 16x16 A by a 16x8 B into a 16x8 C; each
// of the 32 lanes holds a fixed piece of each operand. With g = lane / 4 and t = lane % 4:
//   A (row-major 16x16): reg0 = A[g][2t..2t+1],   reg1 = A[g+8][2t..2t+1],
//                        reg2 = A[g][2t+8..2t+9], reg3 = A[g+8][2t+8..2t+9]
//   B (16x8, k x n):     reg0 = B[2t..2t+1][g],   reg1 = B[2t+8..2t+9][g]
//   C (16x8 fp32):       c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
// Each register packs two bf16, the lower index in the low half. Note that the C pieces of two
// neighbouring 16x8 tiles are exactly the A pieces of one 16x16 tile: that is why the score tile
// P can feed the P V product straight from registers.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c += a * b, with the 3xBF16 correction terms when the inputs were fp32.
template <bool kSplit>
__device__ __forceinline__ void mma(float c[4], const uint32_t a_hi[4], const uint32_t a_lo[4],
                                    const uint32_t b_hi[2], const uint32_t b_lo[2]) {
  if (kSplit) {  // small terms first
    mma_bf16_16816(c, a_lo, b_hi);
    mma_bf16_16816(c, a_hi, b_lo);
  }
  mma_bf16_16816(c, a_hi, b_hi);
}

// Two floats as one bf16x2 register (hi) and the rounding remainders as another (lo).
__device__ __forceinline__ void split_bf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  __nv_bfloat162 l = __floats2bfloat162_rn(x0 - __low2float(h), x1 - __high2float(h));
  hi = *reinterpret_cast<uint32_t*>(&h);
  lo = *reinterpret_cast<uint32_t*>(&l);
}

// ldmatrix: each lane names one 16-byte row of the four 8x8 bf16 matrices (lanes 0-7 matrix 0,
// 8-15 matrix 1, ...), and receives register i = matrix i at [g][2t..2t+1] (or with .trans, at
// [2t..2t+1][g]) -- exactly the fragment layout above, in one instruction instead of eight loads.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
  uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
  uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// Fragment loaders from a shared tile with row stride `stride`, starting at `tile`. Each comes in
// a bf16 version (ldmatrix; lo unused) and an fp32 version (plain loads, split into hi + lo).
//   load_a:      the 16x16 A fragment of a row-major tile (Q).
//   load_b_rows: B fragments of two 8-wide n tiles when B[k][n] = tile[n][k] (K in S = Q K^T):
//                regs 0-1 for columns n 0-7, regs 2-3 for n 8-15.
//   load_b_cols: the same when B[k][n] = tile[k][n] (V in O = P V).
__device__ __forceinline__ void load_a(const __nv_bfloat16* tile, int stride, int lane,
                                       uint32_t hi[4], uint32_t lo[4]) {
  ldmatrix_x4(hi, tile + (lane % 16) * stride + (lane / 16) * 8);
}
__device__ __forceinline__ void load_b_rows(const __nv_bfloat16* tile, int stride, int lane,
                                            uint32_t hi[4], uint32_t lo[4]) {
  ldmatrix_x4(hi, tile + (lane % 8 + (lane / 16) * 8) * stride + ((lane / 8) % 2) * 8);
}
__device__ __forceinline__ void load_b_cols(const __nv_bfloat16* tile, int stride, int lane,
                                            uint32_t hi[4], uint32_t lo[4]) {
  ldmatrix_x4_trans(hi, tile + (lane % 16) * stride + (lane / 16) * 8);
}

__device__ __forceinline__ void load_a(const float* tile, int stride, int lane, uint32_t hi[4],
                                       uint32_t lo[4]) {
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {  // reg i: row g (+8 if i odd), columns 2t (+8 if i >= 2)
    float2 x = *reinterpret_cast<const float2*>(tile + (g + (i % 2) * 8) * stride + 2 * t + (i / 2) * 8);
    split_bf16(x.x, x.y, hi[i], lo[i]);
  }
}
__device__ __forceinline__ void load_b_rows(const float* tile, int stride, int lane,
                                            uint32_t hi[4], uint32_t lo[4]) {
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {  // reg i: tile row n = g (+8 if i >= 2), k = 2t (+8 if i odd)
    float2 x = *reinterpret_cast<const float2*>(tile + (g + (i / 2) * 8) * stride + 2 * t + (i % 2) * 8);
    split_bf16(x.x, x.y, hi[i], lo[i]);
  }
}
__device__ __forceinline__ void load_b_cols(const float* tile, int stride, int lane,
                                            uint32_t hi[4], uint32_t lo[4]) {
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {  // reg i: tile rows k = 2t, 2t+1 (+8 if i odd), column g (+8 if i >= 2)
    const float* p = tile + (2 * t + (i % 2) * 8) * stride + g + (i / 2) * 8;
    split_bf16(p[0], p[stride], hi[i], lo[i]);
  }
}

// Starts copying rows [row0, row0 + kRows) of one (batch, head) from global [B, T, H, K] memory
// into a shared tile with row stride kStride: 16-byte cp.async copies spread over all threads,
// which run in the background until cp_async_wait. Rows past the end of the sequence are
// zero-filled (source size 0), so the maths on them is harmless (and masked).
template <typename T, int kRows, int kHeadDim, int kStride>
__device__ __forceinline__ void load_tile_async(T* smem, const T* head_base, int row0, int seq_len,
                                                int row_pitch) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kVecsPerRow = kHeadDim / kVec;
  for (int i = threadIdx.x; i < kRows * kVecsPerRow; i += kThreads) {
    int r = i / kVecsPerRow, c = (i % kVecsPerRow) * kVec;
    bool in_range = row0 + r < seq_len;
    const T* src = head_base + (size_t)(in_range ? row0 + r : 0) * row_pitch + c;
    uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem + r * kStride + c));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(in_range ? 16 : 0));
  }
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// ---------------------------------------------------------------------------------------------
// The kernel. Grid: (ceil(T / kBlockM), H, B); block: 4 warps.
// ---------------------------------------------------------------------------------------------
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
attention_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     T* __restrict__ o, float* __restrict__ lse, int seq_len, int n_heads,
                     float scale, bool causal) {
  constexpr bool kSplit = std::is_same<T, float>::value;
  // Shared rows are padded by 8 elements: the 8 rows an ldmatrix (or a fragment load) touches
  // then fall in different banks instead of all in the same ones (an unpadded 128-byte stride).
  constexpr int kStride = kHeadDim + 8;
  constexpr int kTilesN = kBlockN / 8;    // 8-wide score tiles in a warp's strip
  constexpr int kTilesK = kHeadDim / 8;   // 8-wide output tiles in a warp's strip
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* k_s = q_s + kBlockM * kStride;
  T* v_s = k_s + kBlockN * kStride;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;     // see the fragment table above
  // Under a causal mask the last query tiles have the most keys: start them first, so the short
  // ones fill in at the end instead of a few long ones running alone.
  const int q_tile = causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int q0 = q_tile * kBlockM;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int row_pitch = n_heads * kHeadDim;  // elements between consecutive time steps
  const size_t head_offset = (size_t)batch * seq_len * row_pitch + (size_t)head * kHeadDim;
  const T* k_head = k + head_offset;
  const T* v_head = v + head_offset;

  // With a causal mask, keys past the last query row of this block contribute nothing.
  const int kv_end = causal ? min(seq_len, q0 + kBlockM) : seq_len;
  load_tile_async<T, kBlockM, kHeadDim, kStride>(q_s, q + head_offset, q0, seq_len, row_pitch);
  load_tile_async<T, kBlockN, kHeadDim, kStride>(k_s, k_head, 0, seq_len, row_pitch);

  // This lane's two query rows (g and g + 8 of its warp's strip), as absolute positions.
  const int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
  const float scale_log2 = scale * 1.4426950408889634f;  // log2(e)
  float m[2] = {-INFINITY, -INFINITY};  // running max of scaled scores (base-2 units)
  float l[2] = {0.f, 0.f};              // running sum of exp2, this lane's columns only
  float acc[kTilesK][4] = {};           // output strip 16 x K, C-fragment layout
  uint32_t q_hi[kHeadDim / 16][4], q_lo[kHeadDim / 16][4];  // the warp's Q strip, A fragments

  for (int kv0 = 0; kv0 < kv_end; kv0 += kBlockN) {
    cp_async_wait_all();  // this K tile (and, the first time, Q) has landed ...
    __syncthreads();      // ... for every thread's copies, and all warps are done with V
    load_tile_async<T, kBlockN, kHeadDim, kStride>(v_s, v_head, kv0, seq_len, row_pitch);
    if (kv0 == 0) {  // Q is read once, into registers
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        load_a(q_s + warp * 16 * kStride + kk * 16, kStride, lane, q_hi[kk], q_lo[kk]);
      }
    }

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[kTilesN][4] = {};
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
      for (int n = 0; n < kTilesN; n += 2) {
        uint32_t b_hi[4], b_lo[4];
        load_b_rows(k_s + n * 8 * kStride + kk * 16, kStride, lane, b_hi, b_lo);
        mma<kSplit>(s[n], q_hi[kk], q_lo[kk], b_hi, b_lo);
        mma<kSplit>(s[n + 1], q_hi[kk], q_lo[kk], b_hi + 2, b_lo + 2);
      }
    }

    // Scale into base-2 units, and mask where this tile reaches past the sequence end or (causal)
    // past the block's first query row. Element i of score tile n sits at row
    // (i < 2 ? row_a : row_b) and key kv0 + 8n + 2t + (i & 1).
    const bool needs_mask = kv0 + kBlockN > seq_len || (causal && kv0 + kBlockN - 1 > q0);
#pragma unroll
    for (int n = 0; n < kTilesN; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        int key = kv0 + n * 8 + 2 * t + (i & 1);
        int row = i < 2 ? row_a : row_b;
        bool masked = needs_mask && (key >= seq_len || (causal && key > row));
        s[n][i] = masked ? -INFINITY : s[n][i] * scale_log2;
      }
    }

    // Online softmax. A row lives in the 4 lanes that share g, so its max is a 4-lane shuffle.
    float correction[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < kTilesN; ++n) tile_max = fmaxf(tile_max, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffff, tile_max, 2));
      float m_new = fmaxf(m[r], tile_max);
      // A row that has seen only masked keys so far keeps m = -inf; subtracting 0 instead keeps
      // exp2(-inf - -inf) = NaN out (every such p is exp2(-inf) = 0 anyway).
      float m_safe = m_new == -INFINITY ? 0.f : m_new;
      correction[r] = exp2f(m[r] - m_safe);
      m[r] = m_new;
      float row_sum = 0.f;
#pragma unroll
      for (int n = 0; n < kTilesN; ++n) {
        s[n][2 * r] = exp2f(s[n][2 * r] - m_safe);
        s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - m_safe);
        row_sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      // The 4 lanes of a row share m and the correction, so each can keep a partial sum and
      // they are added up once, after the last tile.
      l[r] = l[r] * correction[r] + row_sum;
    }
#pragma unroll
    for (int n = 0; n < kTilesK; ++n) {
      acc[n][0] *= correction[0];
      acc[n][1] *= correction[0];
      acc[n][2] *= correction[1];
      acc[n][3] *= correction[1];
    }

    cp_async_wait_all();  // this V tile has landed ...
    __syncthreads();      // ... for all threads, and all warps are done reading K
    if (kv0 + kBlockN < kv_end) {
      load_tile_async<T, kBlockN, kHeadDim, kStride>(k_s, k_head, kv0 + kBlockN, seq_len, row_pitch);
    }

    // O += P V. P's A fragment for keys [16j, 16j + 16) is score tiles 2j and 2j + 1 as they
    // already sit in registers (see the fragment table), rounded to bf16.
#pragma unroll
    for (int j = 0; j < kBlockN / 16; ++j) {
      uint32_t p_hi[4], p_lo[4];
      split_bf16(s[2 * j][0], s[2 * j][1], p_hi[0], p_lo[0]);          // row g,   keys 2t
      split_bf16(s[2 * j][2], s[2 * j][3], p_hi[1], p_lo[1]);          // row g+8, keys 2t
      split_bf16(s[2 * j + 1][0], s[2 * j + 1][1], p_hi[2], p_lo[2]);  // row g,   keys 2t+8
      split_bf16(s[2 * j + 1][2], s[2 * j + 1][3], p_hi[3], p_lo[3]);  // row g+8, keys 2t+8
#pragma unroll
      for (int n = 0; n < kTilesK; n += 2) {
        uint32_t b_hi[4], b_lo[4];
        load_b_cols(v_s + j * 16 * kStride + n * 8, kStride, lane, b_hi, b_lo);
        mma<kSplit>(acc[n], p_hi, p_lo, b_hi, b_lo);
        mma<kSplit>(acc[n + 1], p_hi, p_lo, b_hi + 2, b_lo + 2);
      }
    }
  }
  // Finish: add up each row's 4 partial sums, normalise, write O (and the logsumexp).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
  }
  const float inv_l[2] = {1.f / l[0], 1.f / l[1]};
  const int rows[2] = {row_a, row_b};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= seq_len) continue;
    T* o_row = o + head_offset + (size_t)rows[r] * row_pitch + 2 * t;
#pragma unroll
    for (int n = 0; n < kTilesK; ++n) {
      float x0 = acc[n][2 * r] * inv_l[r], x1 = acc[n][2 * r + 1] * inv_l[r];
      if constexpr (kSplit) {
        *reinterpret_cast<float2*>(o_row + n * 8) = make_float2(x0, x1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(o_row + n * 8) = __floats2bfloat162_rn(x0, x1);
      }
    }
    if (t == 0) {  // lse = ln(sum exp(scale * s)) = (m + log2 l) * ln 2
      lse[((size_t)batch * n_heads + head) * seq_len + rows[r]] = (m[r] + log2f(l[r])) * 0.6931471805599453f;
    }
  }
}

template <typename T, int kHeadDim>
cudaError_t launch(cudaStream_t stream, const void* q, const void* k, const void* v, void* o,
                   float* lse, int batch, int seq_len, int n_heads, float scale, bool causal) {
  constexpr int kStride = kHeadDim + 8;  // as in the kernel
  constexpr int kSmem = (kBlockM + 2 * kBlockN) * kStride * sizeof(T);
  auto kernel = attention_fwd_kernel<T, kHeadDim>;
  // Above 48 KiB of shared memory a kernel must opt in (fp32 with K = 128 needs ~100 KiB).
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  dim3 grid((seq_len + kBlockM - 1) / kBlockM, n_heads, batch);
  kernel<<<grid, kThreads, kSmem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                            static_cast<const T*>(v), static_cast<T*>(o), lse,
                                            seq_len, n_heads, scale, causal);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_head_dim(int head_dim, cudaStream_t stream, const void* q, const void* k,
                                const void* v, void* o, float* lse, int batch, int seq_len,
                                int n_heads, float scale, bool causal) {
  switch (head_dim) {
    case 32: return launch<T, 32>(stream, q, k, v, o, lse, batch, seq_len, n_heads, scale, causal);
    case 64: return launch<T, 64>(stream, q, k, v, o, lse, batch, seq_len, n_heads, scale, causal);
    case 128: return launch<T, 128>(stream, q, k, v, o, lse, batch, seq_len, n_heads, scale, causal);
    default: return cudaErrorInvalidValue;
  }
}

// ---------------------------------------------------------------------------------------------
// XLA FFI handler: checks what Python already checked (a wrong call here would read out of
// bounds), then launches on XLA's stream. `o_init` (the aliased variant) is never read.
// ---------------------------------------------------------------------------------------------
bool same_dims(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

ffi::Error attention_fwd(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                         int32_t causal, float scale, ffi::Result<ffi::AnyBuffer> o,
                         ffi::Result<ffi::Buffer<ffi::F32>> lse) {
  auto dims = q.dimensions();
  if (dims.size() != 4) return ffi::Error::InvalidArgument("attention_fwd: q must be [B, T, H, K]");
  const int64_t batch = dims[0], seq_len = dims[1], n_heads = dims[2], head_dim = dims[3];
  if (!same_dims(k.dimensions(), dims) || !same_dims(v.dimensions(), dims) ||
      !same_dims(o->dimensions(), dims)) {
    return ffi::Error::InvalidArgument("attention_fwd: q, k, v and o must have the same shape");
  }
  auto dtype = q.element_type();
  if (k.element_type() != dtype || v.element_type() != dtype || o->element_type() != dtype) {
    return ffi::Error::InvalidArgument("attention_fwd: q, k, v and o must have the same dtype");
  }
  if (batch * seq_len * n_heads == 0) return ffi::Error::Success();
  cudaError_t err;
  if (dtype == ffi::DataType::BF16) {
    err = launch_for_head_dim<__nv_bfloat16>(head_dim, stream, q.untyped_data(), k.untyped_data(),
                                             v.untyped_data(), o->untyped_data(), lse->typed_data(),
                                             batch, seq_len, n_heads, scale, causal != 0);
  } else if (dtype == ffi::DataType::F32) {
    err = launch_for_head_dim<float>(head_dim, stream, q.untyped_data(), k.untyped_data(),
                                     v.untyped_data(), o->untyped_data(), lse->typed_data(),
                                     batch, seq_len, n_heads, scale, causal != 0);
  } else {
    return ffi::Error::InvalidArgument("attention_fwd: dtype must be bfloat16 or float32");
  }
  if (err != cudaSuccess) {
    return ffi::Error::Internal(std::string("attention_fwd: ") + cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

ffi::Error attention_fwd_into(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                              ffi::AnyBuffer v, ffi::AnyBuffer /*o_init*/, int32_t causal,
                              float scale, ffi::Result<ffi::AnyBuffer> o,
                              ffi::Result<ffi::Buffer<ffi::F32>> lse) {
  return attention_fwd(stream, q, k, v, causal, scale, o, lse);
}

}  // namespace

// q, k, v -> o, lse
XLA_FFI_DEFINE_HANDLER_SYMBOL(TinylmAttentionFwd, attention_fwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Attr<int32_t>("causal")
                                  .Attr<float>("scale")
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// q, k, v, o_init -> o (aliasing o_init), lse: lets a test hand in a poisoned output buffer and
// check that the kernel overwrites every element.
XLA_FFI_DEFINE_HANDLER_SYMBOL(TinylmAttentionFwdInto, attention_fwd_into,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Attr<int32_t>("causal")
                                  .Attr<float>("scale")
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
