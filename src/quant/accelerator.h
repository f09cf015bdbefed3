// Where the model quantizer's heavy arithmetic runs. The quantizer (quant/model_quantizer.h) walks
// the model layer by layer on the host; with an accelerator, the calibration forward passes, the
// Hessian accumulation and GPTQ's solve run on its device instead of OpenBLAS: either whole
// decoder layers (layer_pass: norms, RoPE and attention too, so the activations cross the bus
// once per layer and window), or, where that is not offered, one linear layer at a time with
// attention and norms on the host. Block scoring and selection, packing and writing stay on the
// host, so both paths share one pipeline and differ only by float summation order.
// The CUDA implementation is quant_gpu/calib_cuda.h (cuBLAS + cuSOLVER).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "model/linear.h"
#include "model/rope.h"
#include "quant/gptq.h"
#include "quant/hessian.h"

namespace mosaic {

// One decoder layer as a calibration pass runs it (the math of Model::layer_forward, causal over
// each window from position 0), with the quantizer's input transforms and captures:
//   h = rmsnorm(x) * attn_inv_scale; h = actq(h); capture[0] += h;  q,k,v = h W^T; (q/k norm); RoPE
//   a = attention(q, k, v); a = actq(a); capture[1] += a;  x += a Wo^T
//   h = rmsnorm(x) * mlp_inv_scale; h = actq(h); capture[2] += h;  g,u = h W^T
//   m = silu(g) * u; m = actq(m); capture[3] += m;  x += m Wdown^T
// actq = per-token fake quantization to act_bits (16: none); an empty inv_scale = none (the
// smoothing divisors of quant/smooth.h, as reciprocals like ScaledInputLinear).
struct LayerPass {
  const ModelConfig* cfg = nullptr;
  const RopeTable* rope = nullptr;
  std::span<const float> attn_norm, ffn_norm, q_norm, k_norm;  // q/k: Qwen3 only, else empty
  std::array<std::shared_ptr<const std::vector<float>>, 7> W;  // by LinearId, [N, K] FP32
  // Hessians of the inputs of q/k/v, o_proj, gate/up, down_proj (null: not captured); made by
  // this accelerator's hessian().
  std::array<std::shared_ptr<HessianAccumulator>, 4> capture;
  int act_bits = 16;
  std::span<const float> attn_inv_scale, mlp_inv_scale;
  bool update_x = true;  // false: x is left unchanged (a pass that only captures)
};

class QuantAccelerator {
 public:
  virtual ~QuantAccelerator() = default;
  // "cuda: NVIDIA H100 80GB HBM3" (for progress lines and the report).
  virtual std::string describe() const = 0;
  // An accumulator whose H lives on the device until hessian() is called.
  virtual std::shared_ptr<HessianAccumulator> hessian(int64_t K) = 0;
  // y = x W^T on the device (W [N, K] row-major, uploaded once; x and y are host arrays). When
  // `capture` is set, every forward() also adds its input rows to it (on the device when it came
  // from hessian()).
  virtual std::unique_ptr<Linear> linear(std::shared_ptr<const std::vector<float>> W, int64_t N, int64_t K,
                                         std::shared_ptr<HessianAccumulator> capture) = 0;
  // Runs pass `p` on every calibration window x[s] ([len, hidden] row-major, in place when
  // p.update_x). Returns false, doing nothing, when this accelerator does not run whole layers
  // (then the quantizer runs the layer on the host with linear()).
  virtual bool layer_pass(const LayerPass& p, std::vector<std::vector<float>>& x, int64_t len) {
    (void)p, (void)x, (void)len;
    return false;
  }
  // GPTQ's solve on the device (set as GptqOptions::accel).
  virtual GptqAccelerator* gptq() = 0;
  // Peak device memory in use so far (bytes, sampled after each large allocation), and in total.
  virtual int64_t peak_device_bytes() const = 0;
  virtual int64_t total_device_bytes() const = 0;
};

}  // namespace mosaic
