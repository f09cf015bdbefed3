// Prefill attention of the GPU engine: causal grouped-query attention of n new queries of one
// sequence (positions pos0 .. pos0+n-1) over its cached keys/values 0 .. pos0+n-1. For head_dim 64
// and 128 (every target model) one FlashAttention-2 style kernel (flash_prefill.cu: scores never in
// memory); otherwise through cuBLAS: per kv head, S = Q K^T / sqrt(hd) for its query heads (one
// strided-batched GEMM, FP32 scores), the causal softmax kernel (P in the activation dtype), O = P V
// (a second batched GEMM). Both round P to the activation type before P V.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "gpu/kernels.h"

namespace mosaic::gpu {

// q [n, H*hd], out [n, H*hd]; k_seq / v_seq: this sequence's cache [Hkv][cap][hd]; S: fp32
// scratch of attention_prefill_scratch(n, pos0 + n, d) floats, P: as many act values.
size_t attention_prefill_scratch(int64_t n, int64_t Tk, const kern::AttnDims& d);
// The tensor-core kernel alone (head_dim 64 or 128; MOSAIC_PREFILL_FLASH=0 turns it off): false when
// it does not take these dims (nothing launched), else launched on s. Same layouts as attention_prefill.
bool flash_prefill_enabled(const kern::AttnDims& d);
bool flash_prefill(Act a, const void* q, const void* k_seq, const void* v_seq, int64_t n, int64_t pos0,
                   const kern::AttnDims& d, void* out, cudaStream_t s);
// S and P may be null when flash_prefill_enabled(d).
void attention_prefill(cublasHandle_t h, Act a, const void* q, const void* k_seq, const void* v_seq, int64_t n,
                       int64_t pos0, const kern::AttnDims& d, float* S, void* P, void* out, cudaStream_t s);

}  // namespace mosaic::gpu
