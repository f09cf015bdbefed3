// ZipperEngine wgmma kernel for sm_90a (H100/H200): the fused W4A16 GEMM for M >= 17 ("swap AB").
//
//   D^T[n, m] = sum_k (deq(base) + deq(residual))[n, k] X[m, k]
//
// The WEIGHTS are the A operand of wgmma m64nTOKk16 (A from registers is allowed for f16/bf16) and
// X is the B operand, read by the tensor cores straight from shared memory. Each warp of a
// consumer warpgroup owns 16 outputs = one residual block row, and its A fragment has exactly the
// per-warp layout of an mma.sync m16n8k16 A fragment, which the zipper layout already provides
// (zipper_layout.h: a lane's 16-byte word j holds its fragment of k16 step j; registers
// {b0, b2, b1, b3} of the dequantized word = {a0, a1, a2, a3}). No new layout, no new checkpoint.
//
//   grid  = (N / 128 output tiles, ceil(M / TOK) token tiles, K-splits)      block = 288 threads
//         or, stream-K (f.sk_ctas = P > 0): P persistent CTAs, CTA p taking the units [U p / P, U (p + 1) / P)
//         of the U = tiles x k-tiles units (one k-tile of one CTA tile each, tile-major): a run of
//         segments (the tail of one tile, whole tiles, the head of another) through ONE ring that
//         flows across them; a tile cut between CTAs is summed by the split-K fix-up below
//   warp 8 (producer): per k-tile (128 inputs) into a ring of `stages` slots, on one mbarrier:
//       TMA   X[m0 .. m0 + TOK, k .. k + 128] as two 64-input boxes, 128-byte swizzle (OOB rows = 0)
//       TMA   the codes of the tile's 8 block rows (8 x 1 KB: the layout keeps a block row's
//             chunks contiguous, so [N/16][K x 8 B] is a 2D tensor) and their scales, one box each
//             (f.wtma; or 16 per-row bulk copies: 10-25% slower, H200 v4)
//       bulk  lanes 0..7: the first kept residual block of block row 8 nt + lane in the tile
//             (512 B + 32 B; a second kept block of the same tile is read from global by the consumer)
//   warps 0..7 (2 consumer warpgroups, 64 outputs each): per chunk (64 inputs = 4 k16 steps)
//       LDS.128 codes -> 4 x (lop3 magic-number dequant, x group scale in fp16/bf16) (+ residual
//       codes x residual scale, HFMA2 into the same registers: the zipper, no extra MMA)
//       -> 4 wgmma m64nTOKk16 into the fp32 accumulators; one commit group per chunk (TOK <= 64,
//       96 registers: 2 CTAs per SM) or per k-tile (TOK = 128); wait until <= 1 group is in
//       flight, so the next group is dequantized while this one runs on the tensor cores
//   epilogue: no split: Y[m, n] (lanes g, g ^ 1 swap halves: 4-byte stores of 2 outputs);
//       split-K: float4 reductions into an fp32 workspace, the last CTA of a tile (counter)
//       converts it and re-zeroes workspace and counter.
//
// Accuracy: the weights are rounded to fp16/bf16 once (q * scale) and once more after the residual
// is added, as in the v8 kernel (same test bounds); products and sums are fp32.
#include <cuda.h>  // CUtensorMap (encoded through the runtime's driver entry point: no -lcuda)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/hopper_ptx.cuh"
#include "cuda/pdl.cuh"
#include "cuda/zipper_device.cuh"
#include "cuda/zipper_plan.h"
#include "cuda/zipper_wgmma.h"
#include "util/error.h"

// MOSAIC_WG_DIAG: diagnostic builds for device experiments only (wrong results; never compiled by
// CMake or the scripts): 1 = the code words fed to the wgmma undequantized, 3 = no wgmma, 4 = no
// wgmma and no X tiles, 5 = a k-tile's second kept residual block read from the first one's slot
// instead of global memory. Timed against 0 they split the kernel's time at large M between the
// dequantization and the tensor-core pipeline (docs/kernels-notes.md, ninth session).
#ifndef MOSAIC_WG_DIAG
#define MOSAIC_WG_DIAG 0
#endif

namespace mosaic::cuda::detail {
namespace {

// ---- PTX wrappers: mbarriers, bulk copies, TMA, wgmma in cuda/hopper_ptx.cuh; 16/32-bit shared loads here

using namespace ::mosaic::cuda::hopper;

__device__ __forceinline__ uint32_t lds16(uint32_t addr) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(addr));
  return v;
}

// D[64 x TOK] += A[64 x 16] (registers) * B[16 x TOK] (smem descriptor, K-major), fp32 accumulators.
template <int TOK, typename T>
struct Wgmma;
#define MOSAIC_WGMMA_RS_N16(PTX)                                                                          \
  __device__ static void mma(float (&d)[8], const uint32_t (&a)[4], uint32_t dlo, uint32_t dhi) {                               \
    asm volatile("{\n.reg .b64 desc;\nmov.b64 desc, {%12, %13};\nwgmma.mma_async.sync.aligned.m64n16k16.f32." PTX "." PTX " {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, desc, 1, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(dlo), "r"(dhi));                                         \
  }
#define MOSAIC_WGMMA_RS_N32(PTX)                                                                          \
  __device__ static void mma(float (&d)[16], const uint32_t (&a)[4], uint32_t dlo, uint32_t dhi) {                              \
    asm volatile("{\n.reg .b64 desc;\nmov.b64 desc, {%20, %21};\nwgmma.mma_async.sync.aligned.m64n32k16.f32." PTX "." PTX " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, desc, 1, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(dlo), "r"(dhi));                                         \
  }
#define MOSAIC_WGMMA_RS_N64(PTX)                                                                          \
  __device__ static void mma(float (&d)[32], const uint32_t (&a)[4], uint32_t dlo, uint32_t dhi) {                              \
    asm volatile("{\n.reg .b64 desc;\nmov.b64 desc, {%36, %37};\nwgmma.mma_async.sync.aligned.m64n64k16.f32." PTX "." PTX " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, desc, 1, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(dlo), "r"(dhi));                                         \
  }
#define MOSAIC_WGMMA_RS_N128(PTX)                                                                          \
  __device__ static void mma(float (&d)[64], const uint32_t (&a)[4], uint32_t dlo, uint32_t dhi) {                              \
    asm volatile("{\n.reg .b64 desc;\nmov.b64 desc, {%68, %69};\nwgmma.mma_async.sync.aligned.m64n128k16.f32." PTX "." PTX " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, desc, 1, 1, 1, 0;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(dlo), "r"(dhi));                                         \
  }

#define MOSAIC_WGMMA_SPEC(TOK, TYPE, PTX) \
  template <>                             \
  struct Wgmma<TOK, TYPE> {               \
    MOSAIC_WGMMA_RS_N##TOK(PTX)           \
  };
MOSAIC_WGMMA_SPEC(16, __half, "f16")
MOSAIC_WGMMA_SPEC(32, __half, "f16")
MOSAIC_WGMMA_SPEC(64, __half, "f16")
MOSAIC_WGMMA_SPEC(128, __half, "f16")
MOSAIC_WGMMA_SPEC(16, __nv_bfloat16, "bf16")
MOSAIC_WGMMA_SPEC(32, __nv_bfloat16, "bf16")
MOSAIC_WGMMA_SPEC(64, __nv_bfloat16, "bf16")
MOSAIC_WGMMA_SPEC(128, __nv_bfloat16, "bf16")
#undef MOSAIC_WGMMA_SPEC
#undef MOSAIC_WGMMA_RS_N16
#undef MOSAIC_WGMMA_RS_N32
#undef MOSAIC_WGMMA_RS_N64
#undef MOSAIC_WGMMA_RS_N128

// ---- the kernel -------------------------------------------------------------------------------

// G: chunks per wgmma commit group (1 or 2 = a whole k-tile; 2 needs 32 more registers).
// SK: stream-K (f.sk_ctas CTAs, a run of segments each), instantiated for the 16..64-token tiles. Its own
// instantiation because the segment loop's state spilled 4-96 bytes of the split-K grid's registers when both
// were one kernel (ptxas 13.0, twenty-seventh session).
template <typename T, int TOK, int G, bool SK>
__global__ void __launch_bounds__(kWgThreads, TOK <= 64 ? 2 : 1)
    zipper_wgmma_kernel(const __grid_constant__ CUtensorMap xmap, const __grid_constant__ CUtensorMap wmap,
                        const __grid_constant__ CUtensorMap smap, const DeviceLayer L, const WgmmaLaunch f) {
  using O = Ops<T>;
  using T2 = typename O::T2;
  using MM = Wgmma<TOK, T>;
  constexpr int kAcc = TOK / 2;  // fp32 accumulators per thread (m64 x TOK over 128 threads)
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int spt = L.spt, S = f.stages;
  // Stage layout (bytes): X [2 boxes][TOK][128] | codes [8 rows][1024] | scales [8][32 spt] |
  // residual codes [8][512] | residual scales [8][32].
  const int SB = wgmma_stage_bytes(TOK, spt);
  const int offW = TOK * 256, offS = offW + 8192, offRC = offS + 256 * spt, offRS = offRC + 8 * 512;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S * SB);
  uint64_t* empty = full + kWgMaxStages;
  uint32_t* flags = reinterpret_cast<uint32_t*>(empty + kWgMaxStages);  // [stage]: bit i chunk 0 kept, bit 8+i chunk 1
  int* rbase = reinterpret_cast<int*>(flags + kWgMaxStages);            // [stage][8]: CSR index of the slot's block
  int* s_arrival = rbase + kWgMaxStages * 8;  // split-K: this CTA's arrival ticket
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int R = L.N / 16;  // block rows (16 outputs) of the layer
  const bool res = f.residual && L.res_qweight != nullptr;
  // The CTA's work as segments (for_each_segment calls body(t, kt0, nkt, last) for each): tile t = output
  // tile t % gx of token tile t / gx, its k-tiles [kt0, kt0 + nkt); the grid kernel has one segment per CTA.
  const int gx = (L.N + kWgOut - 1) / kWgOut, ntiles = gx * ((f.M + TOK - 1) / TOK);
  // Stream-K: U units over P CTAs (zipper_plan.h: the partition).
  const int KT = L.K / kTileK;
  const int64_t U = SK ? int64_t(ntiles) * KT : 0, P = SK ? int64_t(gridDim.x) : 1;
  // The CTAs that share tile t (its segments; > 1: the fix-up). Recomputed where needed from launch
  // constants rather than carried through the k-tile loop (registers: the consumers sit at 96).
  const auto segments_of = [&](int t) {
    if constexpr (SK) return stream_k_segments(t, KT, U, P);
    return int(gridDim.z);
  };
  const auto for_each_segment = [&](auto&& body) {
    if constexpr (SK) {
      int u = int(stream_k_first_unit(U, P, blockIdx.x));
      const int u1 = int(stream_k_first_unit(U, P, blockIdx.x + 1));
      while (u < u1) {
        const int t = u / KT, n = min(u1, (t + 1) * KT) - u;
        body(t, u - t * KT, n, u + n == u1);
        u += n;
      }
    } else {
      const int kt0 = blockIdx.z * (f.k_split / kTileK);
      body(int(blockIdx.y * gridDim.x + blockIdx.x), kt0, min(L.K - int(blockIdx.z) * f.k_split, f.k_split) / kTileK,
           true);
    }
  };

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8);  // one arrive per consumer warp
    }
    fence_mbarrier_init();
    fence_proxy_async_smem();
  }
  __syncthreads();

  if (warp == 8) {
    // ---- producer: lane i < 8 owns block row R0 + i of the segment's tile (its codes, scales,
    // residual blocks). gi counts the k-tiles of all segments (the ring's stage and phase). ----
    uint64_t pol;
    if (f.evict_first)
      asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
    else
      asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(pol));
    int gi = 0;
    bool first = true;
    for_each_segment([&](int t, int kt0, int nkt, bool) {
      const int R0 = (t % gx) * 8, m0 = (t / gx) * TOK;
      const int row = R0 + lane;
      const bool row_ok = lane < 8 && row < R;
      const uint8_t* wsrc = reinterpret_cast<const uint8_t*>(L.qweight) + (size_t(row_ok ? row : 0) * (L.K / 64) + 2 * kt0) * 512;
      const uint8_t* ssrc = reinterpret_cast<const uint8_t*>(L.scales) + (size_t(row_ok ? row : 0) * (L.K / kTileK) + kt0) * 32 * spt;
      const uint64_t* bm = res && row_ok ? L.res_bitmap + size_t(row) * L.words_per_row : nullptr;
      int b = 0;          // CSR index of the next kept block of this row
      uint64_t word = 0;  // bitmap word of the current chunk
      if (bm) {
        const int c0 = 2 * kt0;
        b = L.res_rowptr[row];
        for (int w = 0; w < c0 / 64; ++w) b += __popcll(bm[w]);
        word = bm[c0 / 64];
        if (c0 % 64) b += __popcll(word & ((uint64_t(1) << (c0 % 64)) - 1));
      }
      // With programmatic dependent launch (f.pdl) the first `pre` stages' weights are copied while
      // the previous kernel still runs; their X boxes follow its completion (pdl_wait). Without it
      // every stage copies X first, as before (H200: issuing X after the weights cost ~1 us at M = 64).
      const int pre = f.pdl && first ? min(S, nkt) : 0;
      // k-tile i of the segment = ring k-tile gi + i. One k-tile into its stage; with_x = false leaves
      // X out (copy_x, after pdl_wait). The main loop below instantiates it with X only (the code
      // before PDL: putting the PDL branches into that loop made the residual path at M = 32 4-9% slower
      // on the H200).
      const auto copy_x = [&](int i) {
        if (MOSAIC_WG_DIAG == 4) return;
        const int q = gi + i;
        uint8_t* st = smem + (q % S) * SB;
        tma_2d(st, &xmap, (kt0 + i) * kTileK, m0, &full[q % S]);
        tma_2d(st + TOK * 128, &xmap, (kt0 + i) * kTileK + 64, m0, &full[q % S]);
      };
      const auto produce = [&](int i, auto with_x) {
        const int q = gi + i, s = q % S;
        if (q >= S) mbar_wait(&empty[s], ((q / S) - 1) & 1);
        const int c = 2 * (kt0 + i);  // first chunk of the k-tile (even: both chunks in one word)
        unsigned bits = 0;
        if (bm) {
          if (c % 64 == 0 && i > 0) word = bm[c / 64];
          bits = unsigned(word >> (c % 64)) & 3u;
        }
        // f.wtma: the 8 rows' codes and scales as one TMA box each (rows past N read as zeros)
        // instead of 16 per-row bulk copies.
        const uint32_t mine = (row_ok && !f.wtma ? 1024u + 32u * spt : 0u) + (bits ? 544u : 0u);
        const uint32_t bytes = __reduce_add_sync(~0u, mine) + (MOSAIC_WG_DIAG == 4 ? 0u : 2u * TOK * 128u) +
                               (f.wtma ? 8192u + 256u * spt : 0u);
        const uint32_t kept = (__ballot_sync(~0u, bits & 1u) & 0xffu) | ((__ballot_sync(~0u, bits & 2u) & 0xffu) << 8);
        uint8_t* st = smem + s * SB;
        if (lane < 8) rbase[s * 8 + lane] = b;
        __syncwarp();
        if (lane == 0) {
          flags[s] = kept;
          mbar_expect_tx(&full[s], bytes);  // before any copy of this stage can complete (X's too)
          if constexpr (decltype(with_x)::value) copy_x(i);
          if (f.wtma) {
            tma_2d(st + offW, &wmap, (kt0 + i) * 128, R0, &full[s], pol);  // 128 x u64 = 1 KB per row
            tma_2d(st + offS, &smap, (kt0 + i) * 16 * spt, R0, &full[s], pol);
          }
        }
        __syncwarp();
        if (row_ok) {
          if (!f.wtma) {
            bulk_g2s(st + offW + lane * 1024, wsrc + size_t(i) * 1024, 1024, &full[s], pol);
            bulk_g2s(st + offS + lane * 32 * spt, ssrc + size_t(i) * 32 * spt, 32 * spt, &full[s], pol);
          }
          if (bits) {
            bulk_g2s(st + offRC + lane * 512, reinterpret_cast<const uint8_t*>(L.res_qweight) + size_t(b) * 512, 512,
                     &full[s], pol);
            bulk_g2s(st + offRS + lane * 32, reinterpret_cast<const uint8_t*>(L.res_scales) + size_t(b) * 32, 32,
                     &full[s], pol);
            b += __popc(bits);
          }
        }
      };
      if (pre > 0) {  // PDL: the first stages' weights, then (the previous kernel done) their X
        for (int i = 0; i < pre; ++i) produce(i, std::false_type{});
        pdl_wait();
        pdl_launch_dependents();
        if (lane == 0)
          for (int j = 0; j < pre; ++j) copy_x(j);
      }
      for (int i = pre; i < nkt; ++i) produce(i, std::true_type{});
      gi += nkt;
      first = false;
    });
    return;
  }
  // The consumers write Y / the split-K workspace: not before the previous kernel is done (only
  // when launched with PDL; otherwise the launch itself ordered it).
  if (f.pdl) pdl_wait();

  // ---- consumers: warpgroup wg owns outputs 64 wg .. 64 wg + 63 of the tile; warp w of it the
  // block row ri = 4 wg + w (16 outputs). C fragment of lane (g, t): acc[4j + 0, 1] = output g,
  // tokens 8j + 2t, + 1; acc[4j + 2, 3] = output g + 8, same tokens. ----
  const int g = lane >> 2, t4 = lane & 3;
  const int ri = warp;  // = 4 wg + (warp & 3)
  const uint32_t sbase = smem_addr(smem), full0 = smem_addr(full), empty0 = smem_addr(empty);
  const uint32_t flags0 = smem_addr(flags), rbase0 = smem_addr(rbase);
  // The smem descriptor as two 32-bit halves: + (byte offset >> 4) on the low half addresses any
  // 16-byte offset of the ring (the address field never carries: smem < 256 KB); the high half is
  // constant. (A 64-bit descriptor cost 6 instructions per wgmma: 64-bit add, moves, R2UR x 2.)
  const uint64_t desc0 = desc_sw128(sbase);
  const uint32_t dlo0 = uint32_t(desc0), dhi = uint32_t(desc0 >> 32);
  float acc[kAcc];
  // A fragments, two buffers of G chunks (4 k16 steps each): one buffer is dequantized while the
  // wgmma group of the other runs.
  uint32_t A0[G][4][4], A1[G][4][4];

  // Consumer cursor: k-tile i of the segment in stage s (phase ph; both run on across segments);
  // sp = the previous k-tile's stage.
  int i = 0, nkt = 0, s = 0, sp = 0;
  uint32_t ph = 0, st = sbase, tfl = 0, tA = 0, tB = 0;
  uint32_t dst = dlo0;
  const auto begin_tile = [&]() {
    st = sbase + s * SB;
    dst = dlo0 + uint32_t((s * SB) >> 4);
    mbar_wait(full0 + 8 * s, ph);
    tfl = lds32(flags0 + 4 * s);
    if (spt == 1) {  // group >= 128: one scale per output and k-tile
      tA = lds16(st + offS + ri * 32 + 2 * g) * 0x10001u;  // (the 16-bit scale in both halves)
      tB = lds16(st + offS + ri * 32 + 2 * (g + 8)) * 0x10001u;
    }
  };
  const auto end_tile = [&]() {
    sp = s;
    if (++s == S) s = 0, ph ^= 1u;
    ++i;
  };
  const auto release_prev = [&]() {  // the previous k-tile's wgmma are complete: its stage is free
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * sp);
  };

  // Chunk h of the current k-tile -> A: base codes x group scale (+ residual codes x its scale).
  // A warp of rows past N computes on whatever its smem holds (zeros from TMA, or stale data): its
  // A rows only reach its own accumulator rows, which are never stored. (Zeroing A for it instead
  // made the compiler zero and copy every fragment of every warp, each chunk: ~25 instructions.)
  const auto load_chunk = [&](int h, uint32_t (&A)[4][4]) {
    const uint4 q = lds128(st + offW + ri * 1024 + h * 512 + lane * 16);
    uint32_t sa[4], sb[4];
    if (spt == 1) {
#pragma unroll
      for (int j = 0; j < 4; ++j) sa[j] = tA, sb[j] = tB;
    } else {  // group 64 / 32 / 16: scale set of k16 step 4h + j
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t a = st + offS + ri * 32 * spt + ((((4 * h + j) * spt) >> 3) * 16 + g) * 2;
        sa[j] = lds16(a) * 0x10001u;
        sb[j] = lds16(a + 16) * 0x10001u;
      }
    }
    uint32_t w[4][4];
#if MOSAIC_WG_DIAG == 1  // diagnostic build only: the code words as A, no dequantization (wrong results)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      for (int e = 0; e < 4; ++e) w[j][e] = word(q, (j + e) & 3) ^ sa[j] ^ sb[e];
#else
#pragma unroll
    for (int j = 0; j < 4; ++j)  // w[j]: output g inputs 2t, 2t+1 | 2t+8, 2t+9, output g + 8 the same
      scaled_codes<T>(word(q, j), O::as_t2(sa[j]), O::as_t2(sb[j]), w[j]);
#endif
    if (res && ((tfl >> (8 * h + ri)) & 1u)) {  // warp-uniform: this chunk has a kept residual block
      uint4 rq;
      uint32_t rA, rB;
      // the tile's first kept block of this row: in the slot
      if (h == 0 || !((tfl >> ri) & 1u) || MOSAIC_WG_DIAG == 5) {
        rq = lds128(st + offRC + ri * 512 + lane * 16);
        rA = lds16(st + offRS + ri * 32 + 2 * g) * 0x10001u;
        rB = lds16(st + offRS + ri * 32 + 2 * (g + 8)) * 0x10001u;
      } else {  // both chunks kept (~1% of tiles at 10%): the second block straight from global
        const int bi = int(lds32(rbase0 + 4 * (s * 8 + ri))) + 1;
        rq = __ldg(reinterpret_cast<const uint4*>(L.res_qweight) + size_t(bi) * 32 + lane);
        const unsigned short* rs = reinterpret_cast<const unsigned short*>(L.res_scales) + size_t(bi) * 16;
        rA = uint32_t(__ldg(rs + g)) * 0x10001u;
        rB = uint32_t(__ldg(rs + g + 8)) * 0x10001u;
      }
      const T2 rsA = O::as_t2(rA), rsB = O::as_t2(rB);
#pragma unroll
      for (int j = 0; j < 4; ++j) add_scaled_codes<T>(word(rq, j), rsA, rsB, w[j]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      A[j][0] = w[j][0];
      A[j][1] = w[j][2];
      A[j][2] = w[j][1];
      A[j][3] = w[j][3];
    }
  };
  // The 4 wgmma of chunk h of the current k-tile (X box h, +32 B per k16 step).
  const auto mma_chunk = [&](int h, uint32_t (&A)[4][4]) {
#if MOSAIC_WG_DIAG == 3 || MOSAIC_WG_DIAG == 4  // diagnostic: no wgmma (the dequantization and the ring)
    (void)dhi;
    for (int j = 0; j < 4; ++j) acc[(h * 4 + j) % kAcc] += __uint_as_float(A[j][0] ^ A[j][1] ^ A[j][2] ^ A[j][3]);
#else
#pragma unroll
    for (int j = 0; j < 4; ++j) MM::mma(acc, A[j], dst + uint32_t((h * TOK * 128 + 32 * j) >> 4), dhi);
#endif
  };

  for_each_segment([&](int tile, int kt0, int seg_nkt, bool last_seg) {
    (void)kt0;
    const int R0 = (tile % gx) * 8, m0 = (tile / gx) * TOK;
    const bool active = R0 + ri < R;
    i = 0;
    nkt = seg_nkt;
#pragma unroll
    for (int q = 0; q < kAcc; ++q) acc[q] = 0.f;
    if constexpr (G == 1) {
      // One commit group per chunk: chunk 1 is dequantized while chunk 0's wgmma run, and chunk 0
      // of the next k-tile while chunk 1's run (96 registers: 2 CTAs per SM for TOK <= 64).
      while (i < nkt) {
        begin_tile();
        load_chunk(0, A0[0]);
        wgmma_fence();
        mma_chunk(0, A0[0]);
        wgmma_commit();
        wgmma_wait<1>();  // chunk 1 of the previous k-tile done: A1 and its stage are free
        keep_live(A1[0]);
        if (i > 0) release_prev();
        load_chunk(1, A1[0]);
        wgmma_fence();
        mma_chunk(1, A1[0]);
        wgmma_commit();
        wgmma_wait<1>();  // chunk 0 done
        keep_live(A0[0]);
        end_tile();
      }
      wgmma_wait<0>();
      keep_live(A1[0]);
    } else {
      // One commit group per k-tile (8 wgmma): the next k-tile is dequantized while it runs.
      const auto tile = [&](uint32_t (&cur)[G][4][4], uint32_t (&other)[G][4][4]) {
        begin_tile();
        load_chunk(0, cur[0]);
        load_chunk(1, cur[1]);
        wgmma_fence();
        mma_chunk(0, cur[0]);
        mma_chunk(1, cur[1]);
        wgmma_commit();
        wgmma_wait<1>();  // the previous k-tile done: `other` and its stage are free
        keep_live(other[0]);
        keep_live(other[1]);
        if (i > 0) release_prev();
        end_tile();
      };
      while (i < nkt) {
        tile(A0, A1);
        if (i < nkt) tile(A1, A0);
      }
      wgmma_wait<0>();
      keep_live(A0[0]);
      keep_live(A0[1]);
      keep_live(A1[0]);
      keep_live(A1[1]);
    }
    fence_regs(acc);
    if (!last_seg) release_prev();  // (the next segment's first k-tile waits for no earlier one)

    // ---- epilogue ----
    T* Y = static_cast<T*>(f.Y);
    const int nbase = (R0 + ri) * 16;  // first output of this warp
    const int nseg = segments_of(tile);
    if (nseg > 1) {
      // Split-K fix-up without atomics on the sums. Thread 0 takes a ticket (the arrival order of the
      // tile's K-splits). Arrivals 0 .. splits-2 store their partial sums into workspace slice
      // [ticket] with plain coalesced stores ([slice][tile][q][256 threads] float4: a warp writes 512
      // contiguous bytes) and count themselves done (fence, then the done counter); the last arrival
      // keeps its sums in registers, waits until the others are done and adds their slices. v4 made
      // every split do float4 reductions, in thread order (half-used sectors), into a zeroed
      // workspace that the last CTA re-zeroed: the epilogue was half of the consumer warps' stall
      // samples at M = 128 (ncu, H200, eighth session).
      // (A segment's thread 0 rewrites s_arrival only past the second barrier below, which every
      // consumer thread reaches after reading it.)
      int* ticket = f.counters + 2 * tile;  // [0]: arrivals, [1]: partials stored
      if (tid == 0) *s_arrival = atomicAdd(ticket, 1);
      named_bar_sync(1, 256);
      const int arrival = *s_arrival;
      const int last = nseg - 1;
      float4* ws = reinterpret_cast<float4*>(f.ws) + size_t(tile) * (kAcc / 4) * 256 + tid;
      const size_t slice = size_t(ntiles) * (kAcc / 4) * 256;  // float4s per slice
      if (arrival < last) {
  #pragma unroll
        for (int q = 0; q < kAcc / 4; ++q)
          __stcg(ws + size_t(arrival) * slice + q * 256, make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
        // The barrier orders every consumer thread's stores before thread 0's fence (cumulativity),
        // which orders them before the done count that the last arrival acquires.
        named_bar_sync(1, 256);
        if (tid == 0) {
          asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
          atomicAdd(ticket + 1, 1);
        }
        return;  // (of this segment)
      }
      if (tid == 0) {  // the others took their tickets earlier: they are running and only store
        int done;
        do {
          asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(done) : "l"(ticket + 1) : "memory");
        } while (done < last);
        ticket[0] = 0;  // ready for the next launch (stream order)
        ticket[1] = 0;
      }
      named_bar_sync(1, 256);
      for (int z = 0; z < last; ++z) {
  #pragma unroll
        for (int q = 0; q < kAcc / 4; ++q) {
          const float4 v = __ldcg(ws + size_t(z) * slice + q * 256);
          acc[4 * q] += v.x, acc[4 * q + 1] += v.y, acc[4 * q + 2] += v.z, acc[4 * q + 3] += v.w;
        }
      }
    }
    // Y[m, n]: lanes g and g ^ 1 swap halves so that each stores two adjacent outputs of one token
    // (4 bytes): even g token 8j + 2t, odd g token 8j + 2t + 1.
    const int odd = g & 1;
  #pragma unroll
    for (int j = 0; j < TOK / 8; ++j) {
      const int m = m0 + 8 * j + 2 * t4 + odd;
  #pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const float v0 = acc[4 * j + 2 * hr], v1 = acc[4 * j + 2 * hr + 1];
        const float recv = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
        const float lo = odd ? recv : v0, hi = odd ? v1 : recv;
        if (active && m < f.M) {
          const T2 p = O::pack(lo, hi);
          *reinterpret_cast<uint32_t*>(Y + size_t(m) * L.N + nbase + 8 * hr + (g & ~1)) = O::as_u32(p);
        }
      }
    }
  });
}

// ---- host ---------------------------------------------------------------------------------------

// A 2D tensor map: `inner` elements per row (contiguous), `rows` rows `stride` bytes apart, boxes
// of box_x x box_y; out-of-range boxes read as zeros.
void encode_2d(CUtensorMap* m, CUtensorMapDataType type, const void* p, uint64_t inner, uint64_t rows, uint64_t stride,
               int box_x, int box_y, CUtensorMapSwizzle swz, const char* what) {
  const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(stride)};
  const cuuint32_t box[2] = {cuuint32_t(box_x), cuuint32_t(box_y)};
  const cuuint32_t estr[2] = {1, 1};
  const auto encode = encode_tiled_fn("zipper wgmma");
  const CUresult r = encode(m, type, 2, const_cast<void*>(p), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swz, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("zipper wgmma: cuTensorMapEncodeTiled failed (", int(r), ") for the ", what, " map [", rows, " x ", inner, "]");
}

// Raises (never lowers) the dynamic smem limit of one instantiation (occupancy probes and
// launches share it).
template <typename T, int TOK, int G, bool SK>
bool allow_smem(int smem) {
  static int allowed = 48 * 1024;
  if (smem <= allowed) return true;
  if (cudaFuncSetAttribute(zipper_wgmma_kernel<T, TOK, G, SK>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
      cudaSuccess)
    return false;
  allowed = smem;
  return true;
}

template <typename T, int TOK, int G, bool SK>
void launch_t(const DeviceLayer& L, const WgmmaLaunch& f, cudaStream_t s) {
  const int smem = wgmma_smem_bytes(TOK, L.spt, f.stages);
  if (!allow_smem<T, TOK, G, SK>(smem)) fail("zipper wgmma: cannot set ", smem, " bytes of dynamic shared memory");
  // X [M, K] as a 2D tensor (K inner), boxes of 64 inputs (128 B) x TOK rows, 128-byte swizzle;
  // rows past M read as zeros.
  CUtensorMap map, wmap, smap;
  encode_2d(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, f.X, uint64_t(L.K), uint64_t(f.M), uint64_t(L.K) * 2, 64, TOK,
            CU_TENSOR_MAP_SWIZZLE_128B, "X");
  if (f.wtma) {
    // Codes [N/16 rows][K x 8 bytes] as u64 (boxes of 128 = one k-tile's 1 KB x 8 rows), scales
    // [N/16][K/128 x spt x 16] fp16/bf16 (boxes of 16 spt x 8 rows).
    const uint64_t rows = uint64_t(L.N / 16), sw = uint64_t(L.K / kTileK) * L.spt * 16;
    encode_2d(&wmap, CU_TENSOR_MAP_DATA_TYPE_UINT64, L.qweight, uint64_t(L.K), rows, uint64_t(L.K) * 8, 128, 8,
              CU_TENSOR_MAP_SWIZZLE_NONE, "codes");
    encode_2d(&smap, CU_TENSOR_MAP_DATA_TYPE_UINT16, L.scales, sw, rows, sw * 2, 16 * L.spt, 8,
              CU_TENSOR_MAP_SWIZZLE_NONE, "scales");
  } else {
    wmap = map;
    smap = map;
  }
  const dim3 grid = SK ? dim3(unsigned(f.sk_ctas))
                                  : dim3(unsigned((L.N + kWgOut - 1) / kWgOut), unsigned((f.M + TOK - 1) / TOK),
                                         unsigned((L.K + f.k_split - 1) / f.k_split));
  launch_maybe_pdl(f.pdl != 0, zipper_wgmma_kernel<T, TOK, G, SK>, grid, dim3(kWgThreads), size_t(smem), s, map, wmap, smap, L, f);
}

// TOK <= 64 commit one chunk per group (2 CTAs per SM in 96 registers); TOK = 128 a whole k-tile
// (one chunk per group measured the same on an H200, v2).
template <typename T>
void launch_dt(const DeviceLayer& L, const WgmmaLaunch& f, cudaStream_t s) {
  const bool sk = f.sk_ctas > 0;
  switch (f.tok) {
    case 16: return sk ? launch_t<T, 16, 1, true>(L, f, s) : launch_t<T, 16, 1, false>(L, f, s);
    case 32: return sk ? launch_t<T, 32, 1, true>(L, f, s) : launch_t<T, 32, 1, false>(L, f, s);
    case 64: return sk ? launch_t<T, 64, 1, true>(L, f, s) : launch_t<T, 64, 1, false>(L, f, s);
    case 128:  // (stream-K on the 128-token tile measured mixed: docs/kernels-notes.md, twenty-seventh session)
      MOSAIC_CHECK(!sk, "zipper wgmma: stream-K is built for token tiles of 16..64, not 128");
      return launch_t<T, 128, 2, false>(L, f, s);
    default: fail("zipper wgmma: token tile must be 16, 32, 64 or 128, got ", f.tok);
  }
}

template <int TOK, int G>
int occupancy_t(int smem) {
  if (!allow_smem<__half, TOK, G, false>(smem)) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, zipper_wgmma_kernel<__half, TOK, G, false>, kWgThreads, smem) !=
      cudaSuccess)
    return 0;
  return n;
}

}  // namespace

int wgmma_occupancy(int tok, int smem) {
  static const int max_optin = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
      v = 0;
    cudaGetLastError();
    return v;
  }();
  if (smem > max_optin) return 0;  // (no failing cudaFuncSetAttribute: compute-sanitizer reports those)
  const int n = tok == 16   ? occupancy_t<16, 1>(smem)
                : tok == 32 ? occupancy_t<32, 1>(smem)
                : tok == 64 ? occupancy_t<64, 1>(smem)
                            : occupancy_t<128, 2>(smem);
  cudaGetLastError();  // a probe past the smem limit is not an error of the caller
  return n;
}

void launch_wgmma(const DeviceLayer& L, const WgmmaLaunch& f, cudaStream_t s) {
  MOSAIC_CHECK(f.stages >= 2 && f.stages <= kWgMaxStages, "zipper wgmma: stages must be 2..", kWgMaxStages);
  MOSAIC_CHECK(L.spt >= 1 && L.spt <= 8, "zipper wgmma: scale sets per tile must be 1..8, got ", L.spt);
  if (f.sk_ctas > 0) {
    const int64_t tiles = int64_t((L.N + kWgOut - 1) / kWgOut) * ((f.M + f.tok - 1) / f.tok);
    MOSAIC_CHECK(f.sk_ctas <= tiles * (L.K / kTileK), "zipper wgmma: stream-K over ", f.sk_ctas,
                 " CTAs needs at least as many units (", tiles, " tiles of ", L.K / kTileK,
                 " k-tiles) for layer [N=", L.N, ", K=", L.K, "] at M=", f.M);
    MOSAIC_CHECK(f.counters != nullptr, "zipper wgmma: stream-K needs the split-K counters");
  }
  if (f.bf16)
    launch_dt<__nv_bfloat16>(L, f, s);
  else
    launch_dt<__half>(L, f, s);
}

}  // namespace mosaic::cuda::detail
