// CUDA kernels of the GPU engine (src/gpu/engine.h; kernels.cu, the decode attention in
// decode_attention.cu, shared device helpers in kernel_util.cuh): every non-GEMM op of the model, on FP16 or
// BF16 activations with FP32 math inside each kernel. Host-callable launchers (asynchronous on
// `s`), C++17 and free of CUDA device types so the C++20 engine code can include this header.
// Each op mirrors one op of the CPU engine (src/model/ops_ref.h); tests/gpu/test_gpu_ops.cpp
// checks them against it. add_rms_norm, silu_mul and attention_decode launch with programmatic
// dependent launch (their prologue may overlap the previous kernel's last CTAs; they wait for it
// before reading its output); MOSAIC_PDL=0 launches them plainly.
//
// Layouts (row-major): activations [rows, dim]; the residual stream x is FP32 [rows, hidden];
// the fused QKV projection output is [rows, (H + 2*Hkv) * hd] (q heads, then k heads, then v heads);
// the KV cache of one layer is [slots][Hkv][capacity][hd] (a kv head of a sequence is one
// contiguous [capacity, hd] matrix, as in the CPU engine).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace mosaic::gpu {

enum class Act { F16 = 0, BF16 = 1 };  // activation (and dense weight) dtype: 2 bytes per value
const char* act_name(Act a);          // "fp16" / "bf16"

namespace kern {

// The 8-bit LM head (int8_head.cu): Y[m, v] = scale[v] * sum_k W[v, k] X[m, k] with W int8 [V, D]
// (D a multiple of 64) in the kernel's order, int8_rows_repack(row-major codes) on the device,
// scale fp16 [V], X [M, D] in act dtype, Y [M, V] fp32 (y_f32) or act dtype. FP32 accumulation;
// tensor-core MMA on the exact int8 -> fp16/bf16 codes.
std::vector<int8_t> int8_rows_repack(const int8_t* codes, int64_t V, int64_t D);  // ceil(V / 16) * 16 * D bytes
void int8_rows_gemm(Act a, const int8_t* W, const void* scale, int64_t V, int64_t D, const void* X, int64_t M, void* Y,
                    bool y_f32, cudaStream_t s);
// Rows [row0, row0 + rows) (row0 a multiple of 16) of the repacked codes W -> out [rows, D] in act
// dtype, code x scale rounded once: the large-M path's weights for cuBLAS (Int8GpuLinear).
void int8_rows_dequant(Act a, const int8_t* W, const void* scale, int64_t D, int64_t row0, int64_t rows, void* out,
                       cudaStream_t s);

// x[r, :] = float(table[tok[r], :]) (table [vocab, D] in act dtype). Token ids are checked on the host.
void embedding(Act a, const void* table, int64_t D, const int32_t* tok, int64_t rows, float* x, cudaStream_t s);

// Quantized activations fused into a producer's epilogue (W4A8 / W4A4 models): its output rows
// go through the per-token rule of act_quant.h, exactly as kern::act_fake_quant would do them.
// With codes set (8-bit integer rule only), the producer writes the rows' INT8 codes [rows, K] and their
// scales [rows] (s = max|x| / 127) instead of the rows: the input of the W4A8 INT8 kernel
// (cuda::W4A8Linear::gemm_quantized), bit for bit what its own quantize pass makes of the rows.
struct RowQuant {
  int bits = 16;     // 16: off
  bool fp8 = false;  // e4m3 codes (bits 8)
  int8_t* codes = nullptr;
  float* scales = nullptr;
  bool on() const { return bits < 16; }
  float top() const { return fp8 ? 448.f : float((1 << (bits - 1)) - 1); }
};

// When delta != nullptr: x += float(delta) (the residual add). Then out = act((x * w) * rsqrt(mean(x^2) + eps)),
// per-token quantized when q.on() (or only its codes written, q.codes: out unused).
void add_rms_norm(Act a, float* x, const void* delta, const float* w, int64_t rows, int64_t D, float eps, void* out,
                  cudaStream_t s, RowQuant q = {});
// Whether add_rms_norm / silu_mul can write INT8 codes (RowQuant::codes) for rows of D / I.
bool norm_codes_ok(int64_t D);
bool silu_codes_ok(int64_t I);
// CTAs per row that add_rms_norm (and the quantizing silu_mul / act_fake_quant of rows that long) runs
// `rows` rows of D on: a cluster of several at decode on sm_90 (act_quant.cuh), else 1 (tests).
int held_row_ctas(int64_t rows, int64_t D);

struct AttnDims {
  int H = 0, Hkv = 0, hd = 0;  // query heads, kv heads, head_dim
  int64_t cap = 0;             // KV cache capacity (positions per sequence)
};

// From the fused qkv [rows, (H+2Hkv)*hd]: per head optional RMSNorm over hd (q_norm / k_norm,
// Qwen3; nullptr = none), RoPE at position pos[r] (angle = float(pos) * inv_freq[i], rotate-half
// pairs), then q -> q_out [rows, H*hd], k and v -> the cache of sequence slot[r] at pos[r].
void qkv_rope_cache(Act a, const void* qkv, int64_t rows, const int32_t* pos, const int32_t* slot, const AttnDims& d,
                    const float* q_norm, const float* k_norm, float eps, const float* inv_freq, void* q_out,
                    void* k_cache, void* v_cache, cudaStream_t s);

// Prefill softmax: S fp32 [heads][T][Tk] (already scaled), row t of a head sees keys 0..pos0+t;
// P (act dtype, same shape) = softmax over those, 0 beyond.
void causal_softmax(Act a, const float* S, int64_t heads, int64_t T, int64_t Tk, int64_t pos0, void* P, cudaStream_t s);

// Decode step attention of B query rows, q/k norm + RoPE + KV append fused in: from the fused
// qkv [B, (H+2Hkv)*hd] of row b (sequence slot[b], new token at pos[b]): q and k get q_norm /
// k_norm (nullptr = none) and RoPE at pos[b] as in qkv_rope_cache, k and v go to the cache at
// pos[b], and q attends to keys 0..pos[b] of that sequence; out [B, H*hd]. Split over the keys
// (flash-decoding) by a length read on the device: one launch serves every length (CUDA-graph
// safe), one kernel (the last CTA of each group merges the splits). scratch: device memory of
// attention_decode_scratch_bytes(max_B, d) bytes (B <= max_B), zeroed once before its first use
// (its counters are left at zero by every launch). keys_bound (0: d.cap): the longest pos[b] + 1
// expected over this launch and the replays of a graph that captures it; the split plan is made for
// it (decode_plan.h: fewer splits, merged in a cluster, for short sequences). Any length stays
// correct (the keys are split by the length read on the device); only the speed depends on it.
size_t attention_decode_scratch_bytes(int max_B, const AttnDims& d);
void attention_decode(Act a, const void* qkv, const int32_t* pos, const int32_t* slot, int B, const AttnDims& d,
                      const float* q_norm, const float* k_norm, float eps, const float* inv_freq, void* k_cache,
                      void* v_cache, void* scratch, int max_B, void* out, cudaStream_t s, int64_t keys_bound = 0);

// gu [rows, 2I] = [gate | up] -> out [rows, I] = act(silu(gate) * up), per-token quantized when q.on().
void silu_mul(Act a, const void* gu, int64_t rows, int64_t I, void* out, cudaStream_t s, RowQuant q = {});

// out[r] = argmax of logits row r (fp32 [rows, V]); ties -> lowest id (as mosaic::argmax).
// Two stages (slices of the row in parallel, then one warp per row); scratch: device memory of
// argmax_scratch_bytes(rows).
size_t argmax_scratch_bytes(int64_t rows);
void argmax(const float* logits, int64_t rows, int64_t V, int32_t* out, void* scratch, cudaStream_t s);

// Decode bookkeeping inside the graph: tok[b] = next[b], pos[b] += 1.
void advance(const int32_t* next, int32_t* tok, int32_t* pos, int B, cudaStream_t s);

// out[r] = logsumexp(logits row r) - logits[r, target[r]] (fp32 exp, fp64 sum, as
// ops::logsumexp), or 0 where target[r] < 0.
void row_nll(const float* logits, int64_t rows, int64_t V, const int32_t* target, double* out, cudaStream_t s);

// Gumbel-max sampling at temperature t (> 0): out[r] = argmax(logits/t + Gumbel noise) with
// noise from a counter-based hash of (seed, step, r, v); reproducible for a seed.
void sample_temperature(const float* logits, int64_t rows, int64_t V, float t, uint64_t seed, uint64_t step,
                        int32_t* out, cudaStream_t s);

// w[i] = act(scale * u_i), u_i uniform in [-1, 1) from a hash of (seed, i): random weights.
void fill_random(Act a, void* w, int64_t n, float scale, uint64_t seed, cudaStream_t s);
void fill_f32(float* w, int64_t n, float lo, float hi, uint64_t seed, cudaStream_t s);  // uniform [lo, hi)

// Conversions (tests, uploads): fp32 <-> act dtype.
void f32_to_act(Act a, const float* src, void* dst, int64_t n, cudaStream_t s);
void act_to_f32(Act a, const void* src, float* dst, int64_t n, cudaStream_t s);

}  // namespace kern
}  // namespace mosaic::gpu
