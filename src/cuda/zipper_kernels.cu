// ZipperEngine kernels for sm_90: the fused W4A16 GEMM (dense 4-bit base + 16x64 4-bit residual
// blocks, one launch), the residual-only kernel of the unfused baseline, and the dequantizer of
// the large-M path. Layout: zipper_layout.h; design and measurements: docs/kernels.md.
//
// Shapes used in comments: a CTA owns 128 outputs (8 warps x 16) of one 16*MB-row block of X
// and one K-range [kb, kb + KR) (split-K); a warp streams its 16 outputs' chunks over that range.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/zipper_device.cuh"
#include "cuda/zipper_launch.h"

namespace mosaic::cuda::detail {
namespace {

// ---- the fused kernel ------------------------------------------------------------------------

template <typename T, int MB, bool RES>
__global__ void __launch_bounds__(kWarps * 32) zipper_fused_kernel(DeviceLayer L, FusedLaunch f) {
  constexpr int kStages = stages_for(RES, MB);
  using O = Ops<T>;
  using T2 = typename O::T2;
  extern __shared__ uint4 smem[];
  __shared__ int s_last;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
  const int m0 = blockIdx.z * 16 * MB;           // first row of X of this CTA
  const int kb = blockIdx.y * f.k_split;         // first input of this CTA's K-range
  const int KR = min(L.K - kb, f.k_split);       // multiple of 128, <= 4096
  const int nkt = KR / kTileK;
  const int xs_stride = KR + 8;                  // halves; +16 B per row: ldmatrix rows hit distinct banks
  const int rows = min(f.M - m0, 16 * MB);       // real rows of X in this CTA; row `rows` is all zeros
  const int su4 = stage_u4(L.spt, RES);
  const int kResCodes = kBaseScales + 2 * L.spt, kResScales = kResCodes + 32;
  T* xs = reinterpret_cast<T*>(smem);            // (rows + 1, KR) activation tile
  uint4* stages = smem + ((rows + 1) * xs_stride) / 8 + warp * kStages * su4;

  // 1. Activation tile -> shared memory, once per CTA; all 8 warps reuse it for their outputs.
  //    Only the real rows are stored: MMA rows past M read one shared zero row (M = 1 needs
  //    2 rows of smem, not 16, which leaves room for more CTAs and deeper weight pipelines).
  const T* X = static_cast<const T*>(f.X);
  const int cpr = KR / 8;
  for (int i = threadIdx.x; i < rows * cpr; i += blockDim.x) {
    const int row = i / cpr, col = (i % cpr) * 8;
    cp_async16_zfill(xs + row * xs_stride + col, X + size_t(m0 + row) * L.K + kb + col, true);
  }
  for (int i = threadIdx.x; i < cpr; i += blockDim.x)
    *reinterpret_cast<uint4*>(xs + rows * xs_stride + i * 8) = make_uint4(0, 0, 0, 0);
  cp_async_commit();

  // 2. This warp's 16 outputs (block row r) and its residual blocks in [kb, kb + KR).
  const int r = blockIdx.x * kWarps + warp;
  const bool active = r < L.N / 16;
  uint64_t flags = 0;  // bit c: chunk c of the K-range has a kept residual block
  int b_next = 0;      // CSR index of the next residual block to fetch
  if (RES && active) {
    const uint64_t* bm = L.res_bitmap + size_t(r) * L.words_per_row;
    const int c0 = kb / 64, nc = KR / 64, w0 = c0 / 64, sh = c0 % 64;
    int b = L.res_rowptr[r];
    for (int w = 0; w < w0; ++w) b += __popcll(bm[w]);
    uint64_t bits = bm[w0] >> sh;
    if (sh) b += __popcll(bm[w0] & ((uint64_t(1) << sh) - 1));
    if (sh && w0 + 1 < L.words_per_row) bits |= bm[w0 + 1] << (64 - sh);
    flags = nc < 64 ? bits & ((uint64_t(1) << nc) - 1) : bits;
    b_next = b;
  }
  int b_cons = b_next;  // CSR index of the first residual block of the tile being consumed

  const uint4* gq = reinterpret_cast<const uint4*>(L.qweight) + (size_t(r) * (L.K / 64) + kb / 64) * 32 + lane;
  const uint4* gs = reinterpret_cast<const uint4*>(L.scales) + (size_t(r) * (L.K / kTileK) + kb / kTileK) * L.spt * 2;
  const uint4* grq = reinterpret_cast<const uint4*>(L.res_qweight);
  const uint4* grs = reinterpret_cast<const uint4*>(L.res_scales);
  const uint64_t policy = evict_first_policy();

  // Fetch k-tile i (two chunks of codes, their scales, and the kept residual blocks among them)
  // into stage i % kStages. Every lane copies only what it will read itself, except the scales.
  auto issue = [&](int i) {
    if (active && i < nkt) {
      uint4* st = stages + (i % kStages) * su4;
      cp_async16_stream(st + lane, gq + (2 * i) * 32, policy);
      cp_async16_stream(st + 32 + lane, gq + (2 * i + 1) * 32, policy);
      if (lane < 2 * L.spt) cp_async16_stream(st + kBaseScales + lane, gs + i * L.spt * 2 + lane, policy);
      if constexpr (RES) {
        const unsigned fl = unsigned(flags >> (2 * i)) & 3u;
        if (fl) {
          cp_async16_stream(st + kResCodes + lane, grq + size_t(b_next) * 32 + lane, policy);
          if (lane < 2) cp_async16_stream(st + kResScales + lane, grs + size_t(b_next) * 2 + lane, policy);
          b_next += __popc(fl);
        }
      }
    }
    cp_async_commit();  // empty groups keep the group count uniform
  };

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);
  cp_async_wait<kStages - 1>();  // the activation group (oldest) has landed ...
  __syncthreads();               // ... for every thread's copies

  float acc[MB][2][4] = {};  // (m16 block, n8 tile, mma C fragment)
  if (active) {
    for (int i = 0; i < nkt; ++i) {
      cp_async_wait<kStages - 2>();  // k-tile i is in its stage (this lane's copies)
      __syncwarp();                  // scales copied by lanes 0..15 visible; stage i-1 consumed
      issue(i + kStages - 1);
      const uint4* st = stages + (i % kStages) * su4;
      const T* sc = reinterpret_cast<const T*>(st + kBaseScales);  // (spt, 16)
      const unsigned fl = RES ? unsigned(flags >> (2 * i)) & 3u : 0u;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const uint4 q = st[c * 32 + lane];
        uint4 rq = make_uint4(0, 0, 0, 0);
        T2 rsA{}, rsB{};
        // The chunk's 4 k16 steps compiled with and without the residual: one branch per chunk
        // instead of predicated residual code in every step (v9b, docs/kernels-notes.md).
        const auto steps = [&](auto with_res) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int kk = c * 4 + j;  // k16 step within the tile
            const int gi = L.spt == 1 ? 0 : (kk * 16) / L.group;
            const T2 sA = O::bcast(sc[gi * 16 + g]), sB = O::bcast(sc[gi * 16 + g + 8]);
            uint32_t b[4];
            scaled_codes<T>(word(q, j), sA, sB, b);
            if constexpr (decltype(with_res)::value)  // the zipper: same B fragments, no extra MMA
              add_scaled_codes<T>(word(rq, j), rsA, rsB, b);
#pragma unroll
            for (int mb = 0; mb < MB; ++mb) {
              if (mb * 16 >= rows) break;  // warp-uniform: no MMA on all-zero row blocks
              uint32_t a[4];
              const int row = min(mb * 16 + (lane & 15), rows);
              ldmatrix_x4(a, xs + row * xs_stride + i * kTileK + kk * 16 + (lane >> 4) * 8);
              O::mma(acc[mb][0], a, b[0], b[1]);
              O::mma(acc[mb][1], a, b[2], b[3]);
            }
          }
        };
        if (RES && ((fl >> c) & 1u)) {
          const bool in_slot = c == 0 || fl == 2u;  // the tile's first kept block is in the slot
          const T* rs;
          if (in_slot) {
            rq = st[kResCodes + lane];
            rs = reinterpret_cast<const T*>(st + kResScales);
          } else {  // rare: second block of the tile, read directly (b_cons + 1)
            rq = __ldg(grq + size_t(b_cons + 1) * 32 + lane);
            rs = reinterpret_cast<const T*>(grs + size_t(b_cons + 1) * 2);
          }
          rsA = O::bcast(rs[g]);
          rsB = O::bcast(rs[g + 8]);
          steps(std::true_type{});
        } else {
          steps(std::false_type{});
        }
      }
      if constexpr (RES) b_cons += __popc(fl);
    }
  }
  cp_async_wait<0>();

  // 3. Epilogue. C fragment: (row g, cols 2t, 2t+1) and (row g + 8, same cols) of each n8 tile.
  T* Y = static_cast<T*>(f.Y);
  const int n0 = r * 16 + 2 * (lane & 3);
  if (gridDim.y == 1) {
    if (!active) return;
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + mb * 16 + g + 8 * h;
          if (row < f.M)
            *reinterpret_cast<T2*>(Y + size_t(row) * L.N + n0 + nt * 8) =
                O::pack(acc[mb][nt][2 * h], acc[mb][nt][2 * h + 1]);
        }
    return;
  }
  // Split-K: add partial sums into the fp32 workspace (L2-resident); the last CTA of this
  // output tile to arrive converts them to Y and zeroes the workspace for the next call.
  if (active) {
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + mb * 16 + g + 8 * h;
          if (row < f.M)  // one 8-byte vector atomic per output pair (sm_90)
            atomicAdd(reinterpret_cast<float2*>(f.ws + size_t(row) * L.N + n0 + nt * 8),
                      make_float2(acc[mb][nt][2 * h], acc[mb][nt][2 * h + 1]));
        }
  }
  __threadfence();
  __syncthreads();
  const int tile = blockIdx.z * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) s_last = atomicAdd(&f.counters[tile], 1) == int(gridDim.y) - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  if (active) {
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + mb * 16 + g + 8 * h;
          if (row < f.M) {
            float* w = f.ws + size_t(row) * L.N + n0 + nt * 8;
            const float v0 = __ldcg(w), v1 = __ldcg(w + 1);
            __stcg(w, 0.f);
            __stcg(w + 1, 0.f);
            *reinterpret_cast<T2*>(Y + size_t(row) * L.N + n0 + nt * 8) = O::pack(v0, v1);
          }
        }
  }
  if (threadIdx.x == 0) f.counters[tile] = 0;
}

// ---- helpers shared by the two simple kernels ---------------------------------------------------

// CSR index of block (r, c) when kept, else -1.
__device__ __forceinline__ int find_block(const DeviceLayer& L, int r, int c) {
  const uint64_t* bm = L.res_bitmap + size_t(r) * L.words_per_row;
  if (!((bm[c / 64] >> (c % 64)) & 1)) return -1;
  int b = L.res_rowptr[r];
  for (int w = 0; w < c / 64; ++w) b += __popcll(bm[w]);
  if (c % 64) b += __popcll(bm[c / 64] & ((uint64_t(1) << (c % 64)) - 1));
  return b;
}

// ---- unfused baseline: Y += X * deq(residual)^T, one warp per block row ----------------------------

template <typename T>
__global__ void __launch_bounds__(256) residual_only_kernel(DeviceLayer L, const T* X, T* Y, int M) {
  using O = Ops<T>;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (r >= L.N / 16 || L.res_rowptr[r] == L.res_rowptr[r + 1]) return;
  const uint64_t* bm = L.res_bitmap + size_t(r) * L.words_per_row;
  for (int m0 = 0; m0 < M; m0 += 16) {
    float acc[2][4] = {};
    int b = L.res_rowptr[r];
    for (int w = 0; w < L.words_per_row; ++w)
      for (uint64_t bits = bm[w]; bits; bits &= bits - 1, ++b) {
        const int c = w * 64 + __ffsll(static_cast<long long>(bits)) - 1;
        const uint4 q = reinterpret_cast<const uint4*>(L.res_qweight)[size_t(b) * 32 + lane];
        const auto rsA = O::bcast(reinterpret_cast<const T*>(L.res_scales)[size_t(b) * 16 + g]);
        const auto rsB = O::bcast(reinterpret_cast<const T*>(L.res_scales)[size_t(b) * 16 + g + 8]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int k = c * 64 + j * 16 + 2 * t;
          uint32_t a[4];
#pragma unroll
          for (int h = 0; h < 4; ++h) {  // a0: (g, k) a1: (g+8, k) a2: (g, k+8) a3: (g+8, k+8)
            const int row = m0 + g + 8 * (h & 1);
            a[h] = row < M ? *reinterpret_cast<const uint32_t*>(X + size_t(row) * L.K + k + 8 * (h >> 1)) : 0u;
          }
          uint32_t rb[4];
          scaled_codes<T>(word(q, j), rsA, rsB, rb);
          O::mma(acc[0], a, rb[0], rb[1]);
          O::mma(acc[1], a, rb[2], rb[3]);
        }
      }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + g + 8 * h;
        if (row >= M) continue;
        auto* y = reinterpret_cast<typename O::T2*>(Y + size_t(row) * L.N + r * 16 + nt * 8 + 2 * t);
        const float2 old = O::unpack(*y);
        *y = O::pack(old.x + acc[nt][2 * h], old.y + acc[nt][2 * h + 1]);
      }
  }
}

// ---- large-M path: W = deq(base) (+ deq(residual)), one warp per 16 x 64 chunk --------------------

template <typename T>
__global__ void __launch_bounds__(256) dequant_kernel(DeviceLayer L, T* W, bool residual) {
  using O = Ops<T>;
  using T2 = typename O::T2;
  __shared__ uint4 tile[8][16][9];  // per warp: 16 rows x 64 inputs (+16 B pad against bank conflicts)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t chunk = int64_t(blockIdx.x) * 8 + warp;
  const int nchunk = L.K / 64;
  if (chunk >= int64_t(L.N / 16) * nchunk) return;
  const int r = int(chunk / nchunk), c = int(chunk % nchunk);
  const uint4 q = reinterpret_cast<const uint4*>(L.qweight)[size_t(chunk) * 32 + lane];
  const T* sc = reinterpret_cast<const T*>(L.scales) + (size_t(r) * (L.K / kTileK) + c / 2) * L.spt * 16;
  const int b = residual && L.res_qweight ? find_block(L, r, c) : -1;
  uint4 rq = make_uint4(0, 0, 0, 0);
  T2 rsA{}, rsB{};
  if (b >= 0) {
    rq = reinterpret_cast<const uint4*>(L.res_qweight)[size_t(b) * 32 + lane];
    rsA = O::bcast(reinterpret_cast<const T*>(L.res_scales)[size_t(b) * 16 + g]);
    rsB = O::bcast(reinterpret_cast<const T*>(L.res_scales)[size_t(b) * 16 + g + 8]);
  }
  uint32_t* tw = reinterpret_cast<uint32_t*>(&tile[warp][0][0]);  // row stride 36 words
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int kk = (c % 2) * 4 + j;
    const int gi = L.spt == 1 ? 0 : (kk * 16) / L.group;
    const T2 sA = O::bcast(sc[gi * 16 + g]), sB = O::bcast(sc[gi * 16 + g + 8]);
    uint32_t v[4];
    scaled_codes<T>(word(q, j), sA, sB, v);
    if (b >= 0) add_scaled_codes<T>(word(rq, j), rsA, rsB, v);
    const int col = (j * 16 + 2 * t) / 2;  // in 4-byte words
    tw[g * 36 + col] = v[0];
    tw[g * 36 + col + 4] = v[1];
    tw[(g + 8) * 36 + col] = v[2];
    tw[(g + 8) * 36 + col + 4] = v[3];
  }
  __syncwarp();
  // Coalesced write-out: each row of the chunk is one 128-byte line, 8 lanes per line.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int idx = i * 32 + lane, row = idx / 8, seg = idx % 8;
    *reinterpret_cast<uint4*>(W + size_t(r * 16 + row) * L.K + c * 64 + seg * 8) = tile[warp][row][seg];
  }
}

// ---- launchers ---------------------------------------------------------------------------------

// Raises (never lowers) the dynamic smem limit of one instantiation: the plan's occupancy probes
// and the launches share it, so a probe of a smaller layer cannot undercut a later launch.
template <typename T, int MB, bool RES>
bool allow_smem(int smem) {
  static int allowed = 48 * 1024;
  if (smem <= allowed) return true;
  if (cudaFuncSetAttribute(zipper_fused_kernel<T, MB, RES>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
      cudaSuccess)
    return false;
  allowed = smem;
  return true;
}

template <typename T, int MB, bool RES>
void launch_fused_t(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  const int smem = fused_smem_bytes(std::min(f.M, 16 * MB) + 1, f.k_split, L.spt, RES, MB);
  if (!allow_smem<T, MB, RES>(smem)) return;  // the launch error is reported by the caller's cudaGetLastError
  const dim3 grid((L.N + kCtaN - 1) / kCtaN, (L.K + f.k_split - 1) / f.k_split, (f.M + 16 * MB - 1) / (16 * MB));
  zipper_fused_kernel<T, MB, RES><<<grid, kWarps * 32, smem, s>>>(L, f);
}

template <typename T, int MB, bool RES>
int occupancy_t(int smem) {
  if (!allow_smem<T, MB, RES>(smem)) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, zipper_fused_kernel<T, MB, RES>, kWarps * 32, smem) !=
      cudaSuccess)
    return 0;
  return n;
}

template <typename T>
void launch_fused_mb(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  const bool res = f.residual && L.res_qweight != nullptr;
  switch (f.m_block) {
    case 1: return res ? launch_fused_t<T, 1, true>(L, f, s) : launch_fused_t<T, 1, false>(L, f, s);
    case 2: return res ? launch_fused_t<T, 2, true>(L, f, s) : launch_fused_t<T, 2, false>(L, f, s);
    default: return res ? launch_fused_t<T, 4, true>(L, f, s) : launch_fused_t<T, 4, false>(L, f, s);
  }
}

}  // namespace

int fused_smem_bytes(int x_rows, int k_split, int spt, bool residual, int m_block) {
  return x_rows * (k_split + 8) * 2 + kWarps * stages_for(residual, m_block) * stage_u4(spt, residual) * 16;
}

int fused_occupancy(int m_block, int bf16, bool residual, int smem) {
  // Only the block size and smem matter here; the fp16 and bf16 kernels use about the same registers.
  (void)bf16;
  switch (m_block) {
    case 1: return residual ? occupancy_t<__half, 1, true>(smem) : occupancy_t<__half, 1, false>(smem);
    case 2: return residual ? occupancy_t<__half, 2, true>(smem) : occupancy_t<__half, 2, false>(smem);
    default: return residual ? occupancy_t<__half, 4, true>(smem) : occupancy_t<__half, 4, false>(smem);
  }
}

void launch_fused(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  if (f.bf16)
    launch_fused_mb<__nv_bfloat16>(L, f, s);
  else
    launch_fused_mb<__half>(L, f, s);
}

void launch_residual_only(const DeviceLayer& L, const void* X, void* Y, int M, int bf16, cudaStream_t s) {
  if (!L.res_qweight) return;
  const int blocks = (L.N / 16 + 7) / 8;
  if (bf16)
    residual_only_kernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(L, static_cast<const __nv_bfloat16*>(X),
                                                               static_cast<__nv_bfloat16*>(Y), M);
  else
    residual_only_kernel<__half><<<blocks, 256, 0, s>>>(L, static_cast<const __half*>(X), static_cast<__half*>(Y), M);
}

void launch_dequant(const DeviceLayer& L, void* W, int bf16, int residual, cudaStream_t s) {
  const int64_t chunks = int64_t(L.N / 16) * (L.K / 64);
  const unsigned blocks = unsigned((chunks + 7) / 8);
  if (bf16)
    dequant_kernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(L, static_cast<__nv_bfloat16*>(W), residual != 0);
  else
    dequant_kernel<__half><<<blocks, 256, 0, s>>>(L, static_cast<__half*>(W), residual != 0);
}

}  // namespace mosaic::cuda::detail
