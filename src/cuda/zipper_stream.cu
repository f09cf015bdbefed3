// ZipperEngine stream kernel for sm_90, the fused W4A16 GEMM for M <= 16 (decode and small
// batches). Same math and layout as zipper_fused_kernel (zipper_kernels.cu); what differs is how
// work is laid out over the GPU (docs/kernels.md, v9 in docs/kernels-notes.md):
//
//   grid  = (G row groups, K-splits, ceil(M / 16))    block = 8 warps     one wave: G * splits
//           <= resident CTAs, chosen by the host plan (ZipperLinear, plan_stream)
//   CTA (a, s): K-range [s*KR, s*KR + KR), X tile (rows + 1 zero row) x KR in smem, loaded once
//   warp w streams rows r_j = 8 (j G + a) + w, j = 0 .. RPW-1 (16 outputs each), every row over
//           the whole K-range, with ONE cp.async ring that flows across rows: no drain, no
//           prologue, no CTA barrier between rows. Consecutive 128-output tiles go to different
//           CTAs, so residual blocks clustered in a few output tiles spread over the SMs.
//   row end: accumulators stored (1 split) or added into the fp32 workspace (RED, no wait);
//   kernel end (split-K): one fence, one counter atomic per row (lanes in parallel), the last
//           arriving warp of a row converts it to FP16/BF16 and re-zeroes workspace and counter.
//
// Why: the v8 kernel gave each warp 2-8 k-tiles, so per-warp fixed costs (X tile, metadata, ring
// ramp, CTA-wide split-K epilogue) were ~3/4 of the instructions issued at M = 1 (ncu v8:
// ~300 issued instructions per 512-byte chunk on qkv where the loop body needs ~80).
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

// S1: one scale set per k-tile (group 128 or a multiple, the primary format): the group scales
// are loaded once per tile instead of once per k16 step.
// ST: ring depth per warp (k-tiles in flight + 1).
template <typename T, bool RES, bool S1, int ST>
__global__ void __launch_bounds__(kWarps * 32) zipper_stream_kernel(DeviceLayer L, FusedLaunch f) {
  constexpr int kStages = ST;
  using O = Ops<T>;
  using T2 = typename O::T2;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
  const int m0 = blockIdx.z * 16;             // first row of X of this CTA
  const int kb = blockIdx.y * f.k_split;      // first input of this CTA's K-range
  const int KR = min(L.K - kb, f.k_split);    // multiple of 128, <= 4096
  const int nkt = KR / kTileK;
  const int xs_stride = KR + 8;               // halves; +16 B per row: ldmatrix rows hit distinct banks
  const int rows = min(f.M - m0, 16);         // real rows of X; row `rows` is all zeros
  const int spt = S1 ? 1 : L.spt;
  const int su4 = stage_u4(spt, RES);
  const int kResCodes = kBaseScales + 2 * spt, kResScales = kResCodes + 32;
  T* xs = reinterpret_cast<T*>(smem);         // (rows + 1, KR) activation tile
  uint4* stages = smem + ((rows + 1) * xs_stride) / 8 + warp * kStages * su4;

  // This warp's rows, j < nrows (a prefix of 0 .. RPW-1): r_j = 8 (j G + a) + w, so a CTA's 8
  // warps stream 8 adjacent rows (256 KB of codes at K = 4096: one 2 MB page, DRAM-page and TLB
  // friendly) and consecutive 128-output tiles go to consecutive CTAs; or, with f.row_interleave,
  // r_j = (8 j + w) G + a (every warp on another tile: spreads clustered residuals further).
  const int R = L.N / 16, G = gridDim.x;
  const auto row_of = [&](int j) {
    return f.row_interleave ? (j * kWarps + warp) * G + int(blockIdx.x) : (j * G + int(blockIdx.x)) * kWarps + warp;
  };
  int nrows = 0;
  while (nrows < f.rows_per_warp && row_of(nrows) < R) ++nrows;

  // 1. Activation tile -> shared memory, once per CTA (all rows of all warps use this K-range).
  const T* X = static_cast<const T*>(f.X);
  const int cpr = KR / 8;
  for (int i = threadIdx.x; i < rows * cpr; i += blockDim.x) {
    const int row = i / cpr, col = (i - row * cpr) * 8;
    cp_async16_zfill(xs + row * xs_stride + col, X + size_t(m0 + row) * L.K + kb + col, true);
  }
  for (int i = threadIdx.x; i < cpr; i += blockDim.x)
    *reinterpret_cast<uint4*>(xs + rows * xs_stride + i * 8) = make_uint4(0, 0, 0, 0);
  cp_async_commit();

  // 2. Residual metadata of row j, computed by lane j for all rows at once (one latency, not one
  //    per row): bit c of my_flags = chunk c of the K-range has a kept block; my_b = CSR index of
  //    the first kept block in the K-range. Other lanes fetch them with shuffles.
  uint64_t my_flags = 0;
  int my_b = 0;
  if (RES && lane < nrows) {
    const int r = row_of(lane);
    const uint64_t* bm = L.res_bitmap + size_t(r) * L.words_per_row;
    const int c0 = kb / 64, nc = KR / 64, w0 = c0 / 64, sh = c0 % 64;
    int b = L.res_rowptr[r];
    for (int w = 0; w < w0; ++w) b += __popcll(bm[w]);
    uint64_t bits = bm[w0] >> sh;
    if (sh) b += __popcll(bm[w0] & ((uint64_t(1) << sh) - 1));
    if (sh && w0 + 1 < L.words_per_row) bits |= bm[w0 + 1] << (64 - sh);
    my_flags = nc < 64 ? bits & ((uint64_t(1) << nc) - 1) : bits;
    my_b = b;
  }
  const auto row_meta = [&](int j, uint64_t& fl, int& b) {  // warp-uniform j
    const unsigned lo = __shfl_sync(~0u, unsigned(my_flags), j), hi = __shfl_sync(~0u, unsigned(my_flags >> 32), j);
    fl = (uint64_t(hi) << 32) | lo;
    b = __shfl_sync(~0u, my_b, j);
  };

  const size_t q_row = size_t(L.K / 64) * 32, s_row = size_t(L.K / kTileK) * spt * 2;  // uint4 per row
  const uint4* gq0 = reinterpret_cast<const uint4*>(L.qweight) + size_t(kb / 64) * 32 + lane;
  const uint4* gs0 = reinterpret_cast<const uint4*>(L.scales) + size_t(kb / kTileK) * spt * 2;
  const uint4* grq = reinterpret_cast<const uint4*>(L.res_qweight);
  const uint4* grs = reinterpret_cast<const uint4*>(L.res_scales);
  const uint64_t policy = evict_first_policy();

  // Producer cursor: row slot ij, k-tile it, ring slot is. Warp-uniform.
  int ij = 0, it = 0, is = 0;
  const uint4 *gq = gq0, *gs = gs0;
  uint64_t ifl = 0;
  int ib = 0;
  if (nrows > 0) {
    const int r = row_of(0);
    gq = gq0 + r * q_row;
    gs = gs0 + r * s_row;
    if (RES) row_meta(0, ifl, ib);
  }
  // Fetch the next k-tile of the stream (two chunks of codes, their scales, the first kept
  // residual block among them) into ring slot `is`. Every lane reads back only what it copied,
  // except the scales (hence the __syncwarp in the loop).
  const auto issue = [&]() {
    if (ij < nrows) {
      uint4* st = stages + is * su4;
      cp_async16_stream(st + lane, gq + (2 * it) * 32, policy);
      cp_async16_stream(st + 32 + lane, gq + (2 * it + 1) * 32, policy);
      if (lane < 2 * spt) cp_async16_stream(st + kBaseScales + lane, gs + it * spt * 2 + lane, policy);
      if constexpr (RES) {
        const unsigned fl = unsigned(ifl >> (2 * it)) & 3u;
        if (fl) {
          cp_async16_stream(st + kResCodes + lane, grq + size_t(ib) * 32 + lane, policy);
          if (lane < 2) cp_async16_stream(st + kResScales + lane, grs + size_t(ib) * 2 + lane, policy);
          ib += __popc(fl);
        }
      }
      if (++it == nkt) {  // next row of this warp: the ring flows on without draining
        it = 0;
        if (++ij < nrows) {
          const int r = row_of(ij);
          gq = gq0 + r * q_row;
          gs = gs0 + r * s_row;
          if (RES) row_meta(ij, ifl, ib);
        }
      }
    }
    cp_async_commit();  // empty groups keep the group count uniform
    is = is + 1 == kStages ? 0 : is + 1;
  };

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue();
  cp_async_wait<kStages - 1>();  // the activation group (oldest) has landed ...
  __syncthreads();               // ... for every thread's copies: the only CTA barrier
  if (nrows == 0) {
    cp_async_wait<0>();
    return;
  }

  T* Y = static_cast<T*>(f.Y);
  const bool split = gridDim.y > 1;
  // C fragment of n8 tile nt: (row g, cols 2t, 2t+1) in acc[nt][0..1], (row g + 8) in [2..3].
  const auto flush_row = [&](int r, const float (&acc)[2][4]) {
    const int t = lane & 3, n0 = r * 16 + 2 * t;
    if (split) {
      // One 16-byte reduction per lane and row (result unused: no wait): lanes t, t^1 swap
      // halves so that even t holds cols 2t..2t+3 of n8 tile 0 and odd t cols 2t-2..2t+1 of tile 1.
      const bool odd = t & 1;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float s0 = odd ? acc[0][2 * h] : acc[1][2 * h], s1 = odd ? acc[0][2 * h + 1] : acc[1][2 * h + 1];
        const float r0 = __shfl_xor_sync(~0u, s0, 1), r1 = __shfl_xor_sync(~0u, s1, 1);
        const int row = m0 + g + 8 * h;
        if (row >= f.M) continue;
        const float4 v = odd ? make_float4(r0, r1, acc[1][2 * h], acc[1][2 * h + 1])
                             : make_float4(acc[0][2 * h], acc[0][2 * h + 1], r0, r1);
        atomicAdd(reinterpret_cast<float4*>(f.ws + size_t(row) * L.N + r * 16 + (odd ? 8 + 2 * t - 2 : 2 * t)), v);
      }
      return;
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + g + 8 * h;
        if (row < f.M)
          *reinterpret_cast<T2*>(Y + size_t(row) * L.N + n0 + nt * 8) = O::pack(acc[nt][2 * h], acc[nt][2 * h + 1]);
      }
  };

  const T* xrow = xs + min(lane & 15, rows) * xs_stride + (lane >> 4) * 8;  // ldmatrix row address
  float acc[2][4] = {};
  int cj = 0, ct = 0, cs = 0;  // consumer: row slot, k-tile, ring slot
  uint64_t cfl = 0;
  int cb = 0;  // CSR index of the first kept block of the tile being consumed
  if (RES) row_meta(0, cfl, cb);
  const int total = nrows * nkt;
  for (int i = 0; i < total; ++i) {
    cp_async_wait<kStages - 2>();  // this lane's copies of tile i have landed
    __syncwarp();                  // scales copied by lanes 0..2spt-1 visible; slot of tile i-1 consumed
    issue();
    const uint4* st = stages + cs * su4;
    cs = cs + 1 == kStages ? 0 : cs + 1;
    const T* sc = reinterpret_cast<const T*>(st + kBaseScales);  // (spt, 16)
    const unsigned fl = RES ? unsigned(cfl >> (2 * ct)) & 3u : 0u;
    T2 sA1{}, sB1{};
    if (S1) {
      sA1 = O::bcast(sc[g]);
      sB1 = O::bcast(sc[g + 8]);
    }
    const T* xk = xrow + ct * kTileK;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const uint4 q = st[c * 32 + lane];
      uint4 rq = make_uint4(0, 0, 0, 0);
      T2 rsA{}, rsB{};
      // The 4 k16 steps of chunk c, compiled twice: with the residual (the zipper: added into the
      // same B fragments, no extra MMA) and without. One branch per chunk instead of predicated
      // residual code in every step (ncu, v9: the predicated form issued 50% more instructions
      // than the dense kernel at a 10% budget).
      const auto steps = [&](auto with_res) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int kk = c * 4 + j;  // k16 step within the tile
          T2 sA = sA1, sB = sB1;
          if (!S1) {
            const int gi = (kk * 16) / L.group;
            sA = O::bcast(sc[gi * 16 + g]);
            sB = O::bcast(sc[gi * 16 + g + 8]);
          }
          uint32_t b[4];
          O::dequant(word(q, j), b);
          b[0] = O::as_u32(__hmul2(O::as_t2(b[0]), sA));
          b[1] = O::as_u32(__hmul2(O::as_t2(b[1]), sA));
          b[2] = O::as_u32(__hmul2(O::as_t2(b[2]), sB));
          b[3] = O::as_u32(__hmul2(O::as_t2(b[3]), sB));
          if constexpr (decltype(with_res)::value) {
            uint32_t rb[4];
            O::dequant(word(rq, j), rb);
            b[0] = O::as_u32(__hfma2(O::as_t2(rb[0]), rsA, O::as_t2(b[0])));
            b[1] = O::as_u32(__hfma2(O::as_t2(rb[1]), rsA, O::as_t2(b[1])));
            b[2] = O::as_u32(__hfma2(O::as_t2(rb[2]), rsB, O::as_t2(b[2])));
            b[3] = O::as_u32(__hfma2(O::as_t2(rb[3]), rsB, O::as_t2(b[3])));
          }
          uint32_t a[4];
          ldmatrix_x4(a, xk + kk * 16);
          O::mma(acc[0], a, b[0], b[1]);
          O::mma(acc[1], a, b[2], b[3]);
        }
      };
      if (RES && ((fl >> c) & 1u)) {
        const bool in_slot = c == 0 || fl == 2u;  // the tile's first kept block is in the slot
        const T* rs;
        if (in_slot) {
          rq = st[kResCodes + lane];
          rs = reinterpret_cast<const T*>(st + kResScales);
        } else {  // rare (~1% of tiles at 10%): second block of the tile, read directly
          rq = __ldg(grq + size_t(cb + 1) * 32 + lane);
          rs = reinterpret_cast<const T*>(grs + size_t(cb + 1) * 2);
        }
        rsA = O::bcast(rs[g]);
        rsB = O::bcast(rs[g + 8]);
        steps(std::true_type{});
      } else {
        steps(std::false_type{});
      }
    }
    if constexpr (RES) cb += __popc(fl);
    if (++ct == nkt) {  // row done: hand its sums off without waiting, go on streaming
      flush_row(row_of(cj), acc);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
      ct = 0;
      if (++cj < nrows && RES) row_meta(cj, cfl, cb);
    }
  }
  cp_async_wait<0>();
  if (!split) return;

  // 3. Split-K fix-up, once per warp: fence the reductions, count arrivals per row (lane j for
  //    row j, all in flight together); the last arriving warp of a row finishes it.
  __threadfence();
  __syncwarp();
  bool last = false;
  int* cnt = f.counters + size_t(blockIdx.z) * R;
  if (lane < nrows) last = atomicAdd(cnt + row_of(lane), 1) == int(gridDim.y) - 1;
  unsigned mask = __ballot_sync(~0u, last);
  if (!mask) return;
  __threadfence();
  while (mask) {
    const int j = __ffs(mask) - 1;
    mask &= mask - 1;
    const int r = row_of(j), n0 = r * 16 + 2 * (lane & 3);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + g + 8 * h;
        if (row >= f.M) continue;
        float2* w = reinterpret_cast<float2*>(f.ws + size_t(row) * L.N + n0 + nt * 8);
        const float2 v = __ldcg(w);
        __stcg(w, make_float2(0.f, 0.f));
        *reinterpret_cast<T2*>(Y + size_t(row) * L.N + n0 + nt * 8) = O::pack(v.x, v.y);
      }
    if (lane == 0) cnt[r] = 0;
  }
}

// Streaming read of `n` 16-byte words with four loads in flight per thread (read_limit probe).
__global__ void __launch_bounds__(512) read_probe_kernel(const uint4* p, size_t n, unsigned* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned x = 0;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldcs(p + i);
    x ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (x == 0x9e3779b9u) *sink = x;  // keeps the loads; practically never written
}

// Raises (never lowers) the dynamic smem limit of one instantiation: the plan's occupancy probes
// and the launches share it, so a probe of a smaller layer cannot undercut a later launch.
template <typename T, bool RES, bool S1, int ST>
bool allow_smem(int smem) {
  static int allowed = 48 * 1024;
  if (smem <= allowed) return true;
  if (cudaFuncSetAttribute(zipper_stream_kernel<T, RES, S1, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
      cudaSuccess)
    return false;
  allowed = smem;
  return true;
}

template <typename T, bool RES, bool S1, int ST>
void launch_stream_t(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  const int smem = stream_smem_bytes(std::min(f.M, 16) + 1, f.k_split, L.spt, RES, ST);
  if (!allow_smem<T, RES, S1, ST>(smem)) return;  // the launch error is reported by the caller's cudaGetLastError
  const dim3 grid(f.n_groups, (L.K + f.k_split - 1) / f.k_split, (f.M + 15) / 16);
  zipper_stream_kernel<T, RES, S1, ST><<<grid, kWarps * 32, smem, s>>>(L, f);
}

template <typename T, int ST>
void launch_stream_st(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  const bool res = f.residual && L.res_qweight != nullptr;
  if (L.spt == 1)
    return res ? launch_stream_t<T, true, true, ST>(L, f, s) : launch_stream_t<T, false, true, ST>(L, f, s);
  return res ? launch_stream_t<T, true, false, ST>(L, f, s) : launch_stream_t<T, false, false, ST>(L, f, s);
}

template <typename T>
void launch_stream_dt(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  return f.stages == 8 ? launch_stream_st<T, 8>(L, f, s) : launch_stream_st<T, 4>(L, f, s);
}

template <bool RES, bool S1, int ST>
int stream_occupancy_t(int smem) {
  if (!allow_smem<__half, RES, S1, ST>(smem)) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, zipper_stream_kernel<__half, RES, S1, ST>, kWarps * 32,
                                                    smem) != cudaSuccess)
    return 0;
  return n;
}

}  // namespace

int stream_smem_bytes(int x_rows, int k_split, int spt, bool residual, int stages) {
  return x_rows * (k_split + 8) * 2 + kWarps * stages * stage_u4(spt, residual) * 16;
}

template <int ST>
int stream_occupancy_st(bool residual, bool spt1, int smem) {
  if (spt1) return residual ? stream_occupancy_t<true, true, ST>(smem) : stream_occupancy_t<false, true, ST>(smem);
  return residual ? stream_occupancy_t<true, false, ST>(smem) : stream_occupancy_t<false, false, ST>(smem);
}

int stream_occupancy(bool residual, bool spt1, int stages, int smem) {
  // The fp16 and bf16 kernels use about the same registers; smem is what varies.
  return stages == 8 ? stream_occupancy_st<8>(residual, spt1, smem) : stream_occupancy_st<4>(residual, spt1, smem);
}

void launch_stream(const DeviceLayer& L, const FusedLaunch& f, cudaStream_t s) {
  if (f.bf16)
    launch_stream_dt<__nv_bfloat16>(L, f, s);
  else
    launch_stream_dt<__half>(L, f, s);
}

void launch_read_probe(const void* p, size_t bytes, unsigned* sink, int num_sms, cudaStream_t s) {
  read_probe_kernel<<<num_sms * 4, 512, 0, s>>>(static_cast<const uint4*>(p), bytes / 16, sink);
}

}  // namespace mosaic::cuda::detail
