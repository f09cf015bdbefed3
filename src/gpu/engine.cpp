#include "gpu/engine.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "cuda/w4a8.h"
#include "cuda/w4a8_layout.h"
#include "format/int_scale_grid.h"
#include "cuda/zipper.h"
#include "cuda/zipper_layout.h"
#include "format/int8_rows.h"
#include "format/packed_checkpoint.h"
#include "gpu/attention.h"
#include "gpu/decode_plan.h"
#include "gpu/device.h"
#include "gpu/linear.h"
#include "io/safetensors.h"
#include "model/quant_linear.h"
#include "model/rope.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/env.h"

namespace mosaic::gpu {

namespace {

void check_cublas(cublasStatus_t st, const char* what) {
  MOSAIC_CHECK(st == CUBLAS_STATUS_SUCCESS, "cuBLAS error in ", what, ": status ", int(st));
}

std::string gib(size_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(1ull << 30));
  return buf;
}

// Quantized activations of a W4A8 / W4A4 model: what every quantized linear gets wrapped in.
struct ActSetup {
  ActQuant q;                             // bits 16: none
  const ActQuantScratch* scratch = nullptr;
  int64_t w4a8_min_m = 0;                 // 0: no W4A8 INT8 kernel
  bool quantized() const { return q.bits < 16; }
  bool int8_kernel() const { return q.bits == 8 && q.format == ActFormat::kInt && w4a8_min_m > 0; }
};

// Where the weights come from: a checkpoint or random numbers (bench e2e --random-weights).
class Source {
 public:
  virtual ~Source() = default;
  const ActSetup* act = nullptr;  // set by the engine before it builds; null: W4A16 / dense
  // Upper estimate of the device bytes of one fused linear (before anything is uploaded).
  virtual size_t estimate(const std::vector<std::string>& prefixes, const std::vector<int64_t>& Ns, int64_t K) const = 0;
  virtual DevBuf norm(const std::string& name, int64_t n) const = 0;  // fp32
  virtual DevBuf embedding(Act a, int64_t V, int64_t D) const = 0;
  virtual bool has_lm_head() const = 0;
  // The linear whose rows are those of `prefixes` (each [Ns[i], K]), concatenated.
  virtual std::unique_ptr<GpuLinear> linear(cublasHandle_t h, Act a, const std::vector<std::string>& prefixes,
                                            const std::vector<int64_t>& Ns, int64_t K, GpuLoadReport& rep,
                                            std::mutex& mu) const = 0;
};

bool zipper_can_take(int64_t N, int64_t K) { return N % 16 == 0 && K % 128 == 0; }

// kind: 0 ZipperEngine, 1 dequantized + cuBLAS, 2 cuBLAS, 3 with the W4A8 kernel, -1 the note only.
void count(GpuLoadReport& rep, std::mutex& mu, int kind, const std::string& note = "") {
  std::lock_guard<std::mutex> g(mu);
  int* counters[] = {&rep.zipper_linears, &rep.dequant_linears, &rep.dense_linears, &rep.w4a8_linears};
  if (kind >= 0) (*counters[kind])++;
  if (!note.empty() && std::find(rep.notes.begin(), rep.notes.end(), note) == rep.notes.end()) rep.notes.push_back(note);
}

std::string act_kind(const char* what, Act a) { return std::string(what) + "-" + act_name(a); }

// Why a kernel's support check refuses a layer ("" = it takes it). Only the shape/format checks are
// caught here: other failures (memory) stay errors.
template <typename Check>
std::string refusal(Check&& check) {
  try {
    check();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A quantized layer's input rows quantized per token (W4A8 / W4A4), and for 8-bit integer codes the
// W4A8 INT8 kernel for large M when it takes the layer (p: the packed weights, null when the layer
// was dequantized from several parts).
std::unique_ptr<GpuLinear> with_act_quant(std::unique_ptr<GpuLinear> inner, const ActSetup* aq, Act a,
                                          const PackedLinear* p, const std::string& what, GpuLoadReport& rep,
                                          std::mutex& mu) {
  if (!aq || !aq->quantized()) return inner;
  std::unique_ptr<cuda::W4A8Linear> w4a8;
  if (p && aq->int8_kernel()) {
    const std::string why = refusal([&] { cuda::check_w4a8_supported(*p); });
    if (why.empty()) {
      w4a8 = std::make_unique<cuda::W4A8Linear>(*p);
      count(rep, mu, 3);
    } else {
      count(rep, mu, -1, "the W4A8 kernel cannot take " + what + " [N=" + std::to_string(p->N) + ", K=" +
                            std::to_string(p->K) + "] (" + why + "): quantized activations on the 16-bit path");
    }
  }
  return std::make_unique<ActQuantGpuLinear>(std::move(inner), aq->q, a, aq->scratch, std::move(w4a8), aq->w4a8_min_m);
}

// A MosaicQuant layer (already concatenated): ZipperEngine when it can take it, else
// dequantized once and run through cuBLAS; wrapped for quantized activations (aq).
std::unique_ptr<GpuLinear> packed_to_gpu(cublasHandle_t h, Act a, const PackedLinear& p, const std::string& what,
                                         GpuLoadReport& rep, std::mutex& mu, const ActSetup* aq) {
  const std::string why = refusal([&] { cuda::check_zipper_supported(p); });  // e.g. K % 128, a qgrid layer
  if (why.empty()) {
    auto z = std::make_unique<ZipperGpuLinear>(p, a);
    count(rep, mu, 0);
    return with_act_quant(std::move(z), aq, a, &p, what, rep, mu);
  }
  const std::vector<float> w = dequantize(p);
  count(rep, mu, 1,
        "ZipperEngine cannot take " + what + " [N=" + std::to_string(p.N) + ", K=" + std::to_string(p.K) + "] (" + why +
            "): dequantized to " + act_name(a) + " + cuBLAS");
  auto d = std::make_unique<DenseGpuLinear>(h, a, upload_weights(a, w.data(), p.N * p.K, nullptr), p.N, p.K,
                                            act_kind("dequant", a));
  return with_act_quant(std::move(d), aq, a, &p, what, rep, mu);
}

class CheckpointSource : public Source {
 public:
  CheckpointSource(const Checkpoint& c, bool quantized) : ckpt_(c), quantized_(quantized) {}

  size_t estimate(const std::vector<std::string>& prefixes, const std::vector<int64_t>& Ns, int64_t K) const override {
    if (prefixes.size() == 1 && has_int8_rows(ckpt_, prefixes[0]))  // codes, scales, large-M scratch
      return size_t(Ns[0] * K + Ns[0] * 2) + std::min<size_t>(size_t(32) << 20, size_t(Ns[0] * K) * 2);
    size_t b = 0;
    int64_t N = 0;
    bool all_packed = true;
    for (size_t i = 0; i < prefixes.size(); ++i) {
      N += Ns[i];
      if (quantized_ && has_packed_linear(ckpt_, prefixes[i])) {
        for (const char* t : {".qweight", ".scales", ".qzeros", ".res_rowptr", ".res_colidx", ".res_qvalues", ".res_scales"})
          if (ckpt_.has(prefixes[i] + t)) b += ckpt_.get(prefixes[i] + t).nbytes;
      } else {
        all_packed = false;
      }
    }
    // Scales are held twice (fp16 and bf16 copies); a layer ZipperEngine cannot take is dense;
    // the W4A8 INT8 kernel holds a second, repacked copy of the packed weights.
    const size_t w4a8 = all_packed && act && act->int8_kernel() ? b : 0;
    if (!all_packed || !zipper_can_take(N, K)) return size_t(N * K) * 2 + w4a8;
    return b + b / 4 + w4a8;
  }

  DevBuf norm(const std::string& name, int64_t n) const override {
    const std::vector<float> w = ckpt_.get(name, {n}).to_f32();
    DevBuf d(size_t(n) * 4, "norm weights");
    check_cuda(cudaMemcpy(d.get(), w.data(), size_t(n) * 4, cudaMemcpyHostToDevice), "cudaMemcpy (norm)");
    return d;
  }

  DevBuf embedding(Act a, int64_t V, int64_t D) const override {
    const std::vector<float> w = ckpt_.get("model.embed_tokens.weight", {V, D}).to_f32();
    return upload_weights(a, w.data(), V * D, nullptr);
  }

  // As the CPU engine: a tied config uses the embedding unless lm_head.weight (or the 8-bit
  // lm_head.weight_int8) is stored.
  bool has_lm_head() const override { return ckpt_.has("lm_head.weight") || has_int8_rows(ckpt_, "lm_head"); }

  std::unique_ptr<GpuLinear> linear(cublasHandle_t h, Act a, const std::vector<std::string>& prefixes,
                                    const std::vector<int64_t>& Ns, int64_t K, GpuLoadReport& rep,
                                    std::mutex& mu) const override {
    if (prefixes.size() == 1 && has_int8_rows(ckpt_, prefixes[0])) return int8_rows(h, a, prefixes[0], Ns[0], K, rep, mu);
    std::vector<PackedLinear> packed;
    bool all_packed = quantized_;
    for (const auto& p : prefixes) all_packed = all_packed && has_packed_linear(ckpt_, p);
    int64_t N = 0;
    for (int64_t n : Ns) N += n;
    // Named without the layer index, so the load report says once per kind of layer.
    const std::string kind = linear_kind(prefixes[0]);
    std::string what = kind.empty() ? prefixes[0] : kind;
    if (prefixes.size() > 1) what += " (+" + std::to_string(prefixes.size() - 1) + " fused)";
    if (all_packed) {
      for (size_t i = 0; i < prefixes.size(); ++i) packed.push_back(read_packed_linear(ckpt_, prefixes[i], Ns[i], K));
      std::vector<const PackedLinear*> ptrs;
      for (const auto& p : packed) ptrs.push_back(&p);
      try {
        const PackedLinear cat = concat_rows(ptrs);
        return packed_to_gpu(h, a, cat, what, rep, mu, act);
      } catch (const Error& e) {
        // fall through: dequantize each part (e.g. parts with different group sizes)
        count(rep, mu, 1, std::string("cannot fuse ") + what + " (" + e.what() + "): dequantized to " + act_name(a) + " + cuBLAS");
        std::vector<float> w;
        for (const auto& p : packed) {
          const auto d = dequantize(p);
          w.insert(w.end(), d.begin(), d.end());
        }
        return with_act_quant(std::make_unique<DenseGpuLinear>(h, a, upload_weights(a, w.data(), N * K, nullptr), N,
                                                               K, act_kind("dequant", a)),
                              act, a, nullptr, what, rep, mu);
      }
    }
    // Dense (or mixed: dequantize the quantized parts).
    std::vector<float> w(size_t(N * K));
    int64_t row = 0;
    bool any_q = false;
    for (size_t i = 0; i < prefixes.size(); ++i) {
      if (quantized_ && has_packed_linear(ckpt_, prefixes[i])) {
        const auto d = dequantize(read_packed_linear(ckpt_, prefixes[i], Ns[i], K));
        std::copy(d.begin(), d.end(), w.begin() + row * K);
        any_q = true;
      } else {
        const TensorView& t = ckpt_.get(prefixes[i] + ".weight", {Ns[i], K});
        MOSAIC_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "tensor '",
                     prefixes[i], ".weight' has dtype ", dtype_name(t.dtype), "; the GPU engine reads F32, F16 or BF16");
        t.to_f32(w.data() + row * K);
      }
      row += Ns[i];
    }
    // The CPU engine quantizes only the quantized parts' inputs; one fused GEMM cannot do both.
    MOSAIC_CHECK(!any_q || !act || !act->quantized(), what, ": quantized and dense parts in one fused layer of a W4A",
                 act ? act->q.bits : 16, " checkpoint: not supported on the GPU; use --device cpu");
    count(rep, mu, any_q ? 1 : 2);
    return std::make_unique<DenseGpuLinear>(h, a, upload_weights(a, w.data(), N * K, nullptr), N, K,
                                            act_kind(any_q ? "dequant" : "cublas", a));
  }

 private:
  // The 8-bit LM head (format/int8_rows.h: the CPU engine's reader and checks).
  std::unique_ptr<GpuLinear> int8_rows(cublasHandle_t h, Act a, const std::string& prefix, int64_t N, int64_t K,
                                       GpuLoadReport& rep, std::mutex& mu) const {
    const Int8Rows head = read_int8_rows(ckpt_, prefix, N, K);
    if (K % 64 != 0) {  // the kernel's chunk; no target model has such a hidden size: dequantize + cuBLAS
      const std::vector<float> w = head.dequantize();
      count(rep, mu, 1, prefix + ": 8-bit head with hidden size " + std::to_string(K) +
                            " (not a multiple of 64): dequantized to " + act_name(a) + " + cuBLAS");
      return std::make_unique<DenseGpuLinear>(h, a, upload_weights(a, w.data(), N * K, nullptr), N, K,
                                              act_kind("dequant", a));
    }
    count(rep, mu, -1, "lm_head: 8-bit codes per row (int8_head.cu)");
    return std::make_unique<Int8GpuLinear>(h, a, head.q.data(), head.scale.data(), N, K);
  }

  const Checkpoint& ckpt_;
  bool quantized_;
};

class RandomSource : public Source {
 public:
  explicit RandomSource(const RandomWeights& rw) : rw_(rw) {}

  size_t estimate(const std::vector<std::string>&, const std::vector<int64_t>& Ns, int64_t K) const override {
    int64_t N = 0;
    for (int64_t n : Ns) N += n;
    if (!rw_.quantized || !zipper_can_take(N, K)) return size_t(N * K) * 2;
    const double res = rw_.budget * double(N * K) / 2 * 1.1;  // residual codes + index
    const size_t b = size_t(double(N * K) / 2 + double(N * (K / rw_.group)) * 4 + res);
    return act && act->int8_kernel() ? 2 * b : b;  // + the W4A8 kernel's repacked copy
  }

  DevBuf norm(const std::string& name, int64_t n) const override {
    DevBuf d(size_t(n) * 4, "norm weights");
    kern::fill_f32(d.as<float>(), n, 0.8f, 1.2f, seed_of(name), nullptr);
    return d;
  }

  DevBuf embedding(Act a, int64_t V, int64_t D) const override {
    DevBuf d(size_t(V * D) * 2, "embedding");
    kern::fill_random(a, d.get(), V * D, 1.0f, rw_.seed * 7919 + 1, nullptr);
    return d;
  }

  bool has_lm_head() const override { return true; }

  std::unique_ptr<GpuLinear> linear(cublasHandle_t h, Act a, const std::vector<std::string>& prefixes,
                                    const std::vector<int64_t>& Ns, int64_t K, GpuLoadReport& rep,
                                    std::mutex& mu) const override {
    int64_t N = 0;
    for (int64_t n : Ns) N += n;
    const uint64_t seed = seed_of(prefixes[0]);
    if (prefixes[0] == "lm_head" && rw_.lm_head_int8) {
      count(rep, mu, -1, "lm_head: 8-bit codes per row (int8_head.cu)");
      return random_int8_linear(h, a, N, K, seed);
    }
    if (rw_.quantized && (prefixes[0] != "lm_head" || rw_.lm_head)) {
      if (rw_.res_profile) {  // each fused part (q / k / v, gate / up) with its kind's rows
        std::vector<PackedLinear> parts;
        for (size_t i = 0; i < prefixes.size(); ++i) {
          const auto it = rw_.res_profile->find(linear_kind(prefixes[i]));
          parts.push_back(random_packed_fast(Ns[i], K, rw_.group, 0, seed + i, 0,
                                             it == rw_.res_profile->end() ? nullptr : &it->second));
          if (rw_.int_scales) snap_to_int_scale_grid(parts.back());
        }
        if (parts.size() == 1) return packed_to_gpu(h, a, parts[0], prefixes[0], rep, mu, act);
        std::vector<const PackedLinear*> ptrs;
        for (const auto& p : parts) ptrs.push_back(&p);
        return packed_to_gpu(h, a, concat_rows(ptrs), prefixes[0], rep, mu, act);
      }
      PackedLinear p = random_packed_fast(N, K, rw_.group, rw_.budget, seed, rw_.res_rows);
      if (rw_.int_scales) snap_to_int_scale_grid(p);
      return packed_to_gpu(h, a, p, prefixes[0], rep, mu, act);
    }
    DevBuf w(size_t(N * K) * 2, "weights");
    kern::fill_random(a, w.get(), N * K, float(std::sqrt(3.0 / double(K))), seed, nullptr);
    check_cuda(cudaStreamSynchronize(nullptr), "random weights");
    count(rep, mu, 2);
    return std::make_unique<DenseGpuLinear>(h, a, std::move(w), N, K, act_kind("cublas", a));
  }

 private:
  uint64_t seed_of(const std::string& name) const {
    uint64_t s = rw_.seed * 1000003;
    for (char c : name) s = s * 131 + uint64_t(uint8_t(c));
    return s;
  }
  RandomWeights rw_;
};

struct Layer {
  DevBuf attn_norm, ffn_norm, q_norm, k_norm;  // fp32
  std::unique_ptr<GpuLinear> qkv, o, gate_up, down;
  // W4A8 / W4A4: the layers whose producer quantizes their input rows in its epilogue (attention
  // norm -> qkv, MLP norm -> gate_up, SiLU-mul -> down; null: not a quantized-activation layer).
  // o_proj's input comes from attention and is quantized by its layer.
  ActQuantGpuLinear *qkv_aq = nullptr, *gate_up_aq = nullptr, *down_aq = nullptr;
  // qkv, o, gate_up, down as plain ZipperEngine layers that may take the dequantize path (null
  // otherwise: dense, W4A8 / W4A4 wrappers, no room for the workspace): the prefill's dequantize ahead.
  const cuda::ZipperLinear* zq[4] = {nullptr, nullptr, nullptr, nullptr};
};

// Dequantize ahead (prefill of W4A16 models): a large-M ZipperEngine linear is "dequantize the
// weights (memory-bound), then cuBLAS (compute-bound)"; in line, the dequantize kernels are ~1-4%
// of a 2048-token prefill that FP16 does not pay. cuBLAS holds every SM, so a dequantize beside a
// GEMM only waits for it (twenty-fourth session, refuted); beside the attention kernels (2 CTAs of
// 128 threads per SM, 80 KB of shared memory each, tensor-bound) a dequantize kernel's CTAs fit
// too. So at each layer's qkv GEMM end a side stream dequantizes that layer's o, gate_up and down
// and the next layer's qkv into four buffers while RoPE and attention run; each GEMM waits for its
// buffer. Same kernels, same cuBLAS calls: bit-identical outputs. MOSAIC_PREFILL_DEQ_AHEAD=0: in
// line (comparisons); =2: the side stream at the highest stream priority.
struct DeqAhead {
  enum Role { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3 };
  cudaStream_t side = nullptr;
  DevBuf own[4];
  void* buf[4] = {nullptr, nullptr, nullptr, nullptr};  // own[r]; null: the shared dequantize buffer (gate_up)
  cudaEvent_t ready[4] = {nullptr, nullptr, nullptr, nullptr}, start = nullptr, qkv_done = nullptr;
  bool on() const { return side != nullptr; }
  ~DeqAhead() {
    for (cudaEvent_t e : ready)
      if (e) cudaEventDestroy(e);
    if (start) cudaEventDestroy(start);
    if (qkv_done) cudaEventDestroy(qkv_done);
    if (side) cudaStreamDestroy(side);
  }
};

// A W4A8 / W4A4 layer whose producer writes quantized rows (when its 16-bit path runs).
ActQuantGpuLinear* fuse_input_quant(GpuLinear* g) {
  auto* w = dynamic_cast<ActQuantGpuLinear*>(g);
  if (w) w->input_quantized = true;
  return w;
}

// The producer's epilogue for M rows into layer w: quantize unless w takes M rows on the INT8
// kernel, which quantizes the raw rows itself (exact codes also with BF16 activations).
kern::RowQuant producer_quant(const ActQuantGpuLinear* w, int64_t M) {
  return w && !w->uses_int8_kernel(M) ? w->row_quant() : kern::RowQuant{};
}

// The same, where the producer can write the INT8 kernel's input itself (codes_ok): for M rows on that kernel
// its codes and scales, so the rows never go through memory in 16 bits and the layer runs no quantize pass of
// its own (forward_codes). MOSAIC_PRODUCER_CODES=0: the layer quantizes (same codes; comparisons).
kern::RowQuant producer_rows(const ActQuantGpuLinear* w, int64_t M, bool codes_ok, cudaStream_t s) {
  static const bool on = env_switch_on("MOSAIC_PRODUCER_CODES");
  if (w && on && codes_ok && w->uses_int8_kernel(M)) return w->producer_codes(M, s);
  return producer_quant(w, M);
}

// layer->forward(X, Y) unless the producer wrote its INT8 input (q.codes).
void run_linear(const GpuLinear& layer, const ActQuantGpuLinear* aq, const kern::RowQuant& q, const void* X, void* Y,
                int64_t M, cudaStream_t s) {
  if (q.codes) aq->forward_codes(Y, M, s);
  else layer.forward(X, Y, M, s);
}

}  // namespace

std::string GpuLoadReport::summary() const {
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "%.2f s on %s, %s activations; GPU memory: weights %s, KV cache %s, scratch %s; fused linears: %d "
                "ZipperEngine, %d dequantized+cuBLAS, %d cuBLAS",
                seconds, device.c_str(), act_name(act), gib(weight_bytes).c_str(), gib(kv_bytes).c_str(),
                gib(scratch_bytes).c_str(), zipper_linears, dequant_linears, dense_linears);
  std::string s = buf;
  if (act_bits < 16)
    s += "; activations quantized per token to " + std::to_string(act_bits) + (act_fp8 ? "-bit FP8" : "-bit integers") +
         ", " + std::to_string(w4a8_linears) + " linears with the W4A8 INT8 kernel";
  for (const auto& n : notes) s += "\n  note: " + n;
  return s;
}

Act default_act(const ModelConfig& cfg) { return cfg.torch_dtype == "bfloat16" ? Act::BF16 : Act::F16; }

Act parse_act(const std::string& s) {
  if (s == "fp16" || s == "f16" || s == "float16") return Act::F16;
  if (s == "bf16" || s == "bfloat16") return Act::BF16;
  fail("activation dtype must be fp16 or bf16, got '", s, "'");
}

struct GpuModel::Impl {
  ModelConfig cfg;
  GpuOptions opt;
  Act act = Act::F16;
  GpuLoadReport report;
  kern::AttnDims dims;
  int64_t D = 0, I = 0, V = 0, qd = 0, kd = 0, qkvN = 0;
  int slots = 1;
  int64_t cap = 0, M = 0, LR = 0;  // scratch rows, logits rows

  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::shared_ptr<cuda::ZipperShared> zipper_shared;  // dequantize-path buffer of all ZipperEngine layers
  DeqAhead deq_ahead;                                 // the prefill's dequantize ahead (on() when set up)
  ActSetup act_setup;                   // quantized activations (W4A8 / W4A4)
  DevBuf act_scratch;                   // their rows: M x the largest K, activation dtype
  ActQuantScratch act_scratch_view;
  DevBuf cublas_ws;
  DevBuf embed, final_norm, inv_freq;
  std::vector<Layer> layers;
  std::unique_ptr<GpuLinear> lm_head;
  const DenseGpuLinear* lm_dense = nullptr;
  const Int8GpuLinear* lm_i8 = nullptr;  // the 8-bit head (writes fp32 logits itself, as lm_dense)

  DevBuf kv;  // [L][2][slots][Hkv][cap][hd]
  std::vector<int64_t> len;
  DevBuf x, h, qkv, q, att, o, gu, actb, logits, arg_scratch, lm_tmp, S, P, partial, tok, pos, slot, next, targets, nll;
  int32_t* h_stage = nullptr;  // pinned: tok | pos | slot | next (M each)
  size_t peak = 0;

  // Decode step graphs by (batch, key bound): the attention's split plan is made for the bound
  // (decode_keys_bound: a power of two >= 64, so a generation captures a handful of graphs).
  using GraphKey = std::pair<int, int64_t>;
  std::map<GraphKey, cudaGraphExec_t> graphs;
  std::map<GraphKey, int> eager_steps;
  int64_t dec_keys = 0;  // the key bound of the decode step being run
  bool graphs_ok = true;
  // Profiling (GpuModel::profile_decode): leave groups of ops out of the decode step.
  static constexpr unsigned kSkipAttention = 1, kSkipGemm = 2, kSkipHead = 4, kSkipSmall = 8, kSkipSilu = 16,
                            kSkipOInputQuant = 32;
  unsigned skip = 0;

  ~Impl() {
    for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
    if (h_stage) cudaFreeHost(h_stage);
    layers.clear();
    lm_head.reset();
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
  }

  void* kc(int l) const { return kv.as<char>() + size_t(l) * 2 * kv_layer_bytes(); }
  void* vc(int l) const { return kv.as<char>() + (size_t(l) * 2 + 1) * kv_layer_bytes(); }
  size_t kv_layer_bytes() const { return size_t(slots) * dims.Hkv * size_t(cap) * dims.hd * 2; }
  // The cuBLAS prefill attention's score scratch (none when the tensor-core kernel takes the heads).
  size_t S_elems() const {
    if (flash_prefill_enabled(dims)) return 0;
    return size_t(cfg.num_heads / cfg.num_kv_heads) * size_t(opt.prefill_chunk) * size_t(cap);
  }

  size_t decode_scratch_bytes() const { return kern::attention_decode_scratch_bytes(slots, dims); }
  size_t act_scratch_bytes(const ActQuant& aq) const {
    return aq.bits < 16 ? size_t(M) * size_t(std::max({D, qd, I})) * 2 : 0;
  }
  // The 16-bit layer inside a quantized-activation wrapper (what a decode step streams).
  static GpuLinear* unwrap(GpuLinear* g) {
    auto* w = dynamic_cast<ActQuantGpuLinear*>(g);
    return w ? &w->inner() : g;
  }

  void note_peak() {
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) == cudaSuccess) peak = std::max(peak, t - f);
  }

  // ---- building --------------------------------------------------------------------------------
  void build(const ModelConfig& c, const GpuOptions& o, Source& src, bool quantized, ActQuant aq = {}) {
    const auto t0 = std::chrono::steady_clock::now();
    require_gpu();
    MOSAIC_CHECK(!c.attention_bias, c.architecture, ": attention_bias = true is not supported");
    MOSAIC_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0, "config: ", c.num_heads,
                 " attention heads are not a multiple of ", c.num_kv_heads, " kv heads");
    MOSAIC_CHECK(c.num_heads / c.num_kv_heads <= 16, "GPU engine: at most 16 query heads per kv head, config has ",
                 c.num_heads / c.num_kv_heads);
    MOSAIC_CHECK(c.head_dim % 2 == 0 && c.head_dim <= 256, "GPU engine: head_dim must be even and <= 256, got ",
                 c.head_dim);
    MOSAIC_CHECK(o.max_batch >= 1 && o.max_batch <= 1024, "GPU engine: max_batch must be in 1..1024, got ", o.max_batch);
    MOSAIC_CHECK(o.prefill_chunk >= 1 && o.prefill_chunk <= 16384, "GPU engine: prefill_chunk must be in 1..16384");
    cfg = c;
    opt = o;
    act = o.act ? *o.act : default_act(c);
    D = c.hidden_size;
    I = c.intermediate_size;
    V = c.vocab_size;
    qd = int64_t(c.num_heads) * c.head_dim;
    kd = int64_t(c.num_kv_heads) * c.head_dim;
    qkvN = qd + 2 * kd;
    slots = o.max_batch;
    cap = o.capacity > 0 ? o.capacity : std::min<int64_t>(c.max_position_embeddings, 4096);
    opt.prefill_chunk = std::min<int64_t>(o.prefill_chunk, cap);
    // MOSAIC_CUDA_GRAPHS=0: decode steps launched eagerly (comparisons of the captured step against its kernels).
    if (!env_switch_on("MOSAIC_CUDA_GRAPHS")) opt.cuda_graphs = false;
    M = std::max<int64_t>(opt.prefill_chunk, slots);
    LR = std::max<int64_t>(std::max<int64_t>(1, o.logits_rows), slots);
    dims = {c.num_heads, c.num_kv_heads, c.head_dim, cap};
    len.assign(size_t(slots), 0);
    MOSAIC_CHECK(aq.bits == 16 || quantized, "quantized activations without quantized weights");
    act_setup = ActSetup{aq, &act_scratch_view, aq.bits < 16 ? o.w4a8_min_m : 0};
    src.act = &act_setup;
    report.act_bits = aq.bits;
    report.act_fp8 = aq.bits < 16 && aq.format == ActFormat::kFp8E4M3;

    // ---- memory check before anything is uploaded
    const int L = c.num_layers;
    size_t w_est = 0, zipper_deq = 0;
    for (int l = 0; l < L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const std::vector<std::pair<std::vector<std::string>, std::vector<int64_t>>> groups = {
          {{p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"}, {qd, kd, kd}},
          {{p + "self_attn.o_proj"}, {D}},
          {{p + "mlp.gate_proj", p + "mlp.up_proj"}, {I, I}},
          {{p + "mlp.down_proj"}, {D}}};
      const int64_t Ks[4] = {D, qd, D, I};
      for (int g = 0; g < 4; ++g) {
        const size_t e = src.estimate(groups[size_t(g)].first, groups[size_t(g)].second, Ks[g]);
        w_est += e;
        int64_t N = 0;
        for (int64_t n : groups[size_t(g)].second) N += n;
        if (quantized) zipper_deq = std::max(zipper_deq, size_t(N * Ks[g]) * 2);  // one shared buffer
      }
      w_est += size_t(2 * D + (c.qk_norm ? 2 * c.head_dim : 0)) * 4;
    }
    const bool tied = c.tie_word_embeddings && !src.has_lm_head();
    w_est += size_t(V * D) * 2 * (tied ? 1 : 2);
    const size_t kv_est = size_t(L) * 2 * kv_layer_bytes();
    const size_t scratch_est =
        size_t(M) * (size_t(D) * (4 + 2 * 2) + size_t(qkvN + 2 * qd) * 2 + size_t(3 * I) * 2) +
        size_t(LR) * size_t(V) * 4 + S_elems() * 6 + decode_scratch_bytes() + act_scratch_bytes(aq) +
        (size_t(64) << 20);
    const size_t free_b = device_free_bytes(), margin = size_t(512) << 20;
    const size_t need = w_est + kv_est + scratch_est + margin;
    report.device = device_name();
    MOSAIC_CHECK(need <= free_b, "the model does not fit in GPU memory: it needs about ", gib(need), " (weights ",
                 gib(w_est), ", KV cache ", gib(kv_est), " for ", slots, " x ", cap, " positions, scratch ",
                 gib(scratch_est), ") but ", report.device, " has ", gib(free_b),
                 " free; use --device cpu, a smaller --ctx / batch, or a quantized checkpoint");
    const bool deq_fits = need + zipper_deq <= free_b;
    const bool allow_deq = !quantized || (o.dequant_workspace && deq_fits);
    if (quantized && !allow_deq)
      report.notes.push_back("large-M ZipperEngine GEMMs kept on the fused kernel (the dequantize path's " +
                             gib(zipper_deq) + " workspace " +
                             (deq_fits ? "is turned off by GpuOptions::dequant_workspace" : "would not fit") + ")");
    if (quantized && allow_deq) {
      zipper_shared = std::make_shared<cuda::ZipperShared>();
      zipper_shared->reserve(zipper_deq);  // before any graph capture
    }

    // A blocking stream: ZipperLinear zeroes its lazily grown workspaces with cudaMemset on the
    // legacy stream, which must be ordered before our kernels.
    check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    check_cublas(cublasCreate(&cublas), "cublasCreate");
    cublas_ws = DevBuf(size_t(32) << 20, "cuBLAS workspace");
    check_cublas(cublasSetWorkspace(cublas, cublas_ws.get(), cublas_ws.bytes()), "cublasSetWorkspace");

    // Quantized activation rows (before the layers, which keep a pointer to it).
    if (aq.bits < 16) {
      act_scratch = DevBuf(act_scratch_bytes(aq), "quantized activations");
      act_scratch_view = {act_scratch.get(), act_scratch.bytes()};
    }

    // ---- weights
    embed = src.embedding(act, V, D);
    final_norm = src.norm("model.norm.weight", D);
    const RopeTable rope = RopeTable::from_config(c);
    inv_freq = DevBuf(rope.inv_freq().size() * 4, "rope");
    check_cuda(cudaMemcpy(inv_freq.get(), rope.inv_freq().data(), inv_freq.bytes(), cudaMemcpyHostToDevice), "rope");
    layers.resize(static_cast<size_t>(L));
    std::mutex mu;
    auto build_layer = [&](int l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Layer& Ly = layers[size_t(l)];
      Ly.attn_norm = src.norm(p + "input_layernorm.weight", D);
      Ly.ffn_norm = src.norm(p + "post_attention_layernorm.weight", D);
      if (c.qk_norm) {
        Ly.q_norm = src.norm(p + "self_attn.q_norm.weight", c.head_dim);
        Ly.k_norm = src.norm(p + "self_attn.k_norm.weight", c.head_dim);
      }
      Ly.qkv = src.linear(cublas, act, {p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"},
                          {qd, kd, kd}, D, report, mu);
      Ly.o = src.linear(cublas, act, {p + "self_attn.o_proj"}, {D}, qd, report, mu);
      Ly.gate_up = src.linear(cublas, act, {p + "mlp.gate_proj", p + "mlp.up_proj"}, {I, I}, D, report, mu);
      Ly.down = src.linear(cublas, act, {p + "mlp.down_proj"}, {D}, I, report, mu);
      Ly.qkv_aq = fuse_input_quant(Ly.qkv.get());
      Ly.gate_up_aq = fuse_input_quant(Ly.gate_up.get());
      Ly.down_aq = fuse_input_quant(Ly.down.get());
      int r = 0;
      for (GpuLinear* g : {Ly.qkv.get(), Ly.o.get(), Ly.gate_up.get(), Ly.down.get()}) {
        auto* z = dynamic_cast<ZipperGpuLinear*>(unwrap(g));
        if (z) {
          z->allow_dequant_path = allow_deq;
          if (zipper_shared) z->share(zipper_shared);
        }
        // The prefill's dequantize ahead takes plain W4A16 layers only (not W4A8 / W4A4 wrappers).
        Ly.zq[r++] = z && z == g && allow_deq ? &z->zipper() : nullptr;
      }
    };
    // Layers are independent: build them on several threads (host-side repacking and random
    // layer generation dominate for big models).
    const int nthreads = std::max(1, std::min<int>(L, int(std::min(16u, std::max(1u, std::thread::hardware_concurrency())))));
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errs(static_cast<size_t>(nthreads));
    for (int t = 0; t < nthreads; ++t)
      pool.emplace_back([&, t] {
        try {
          for (int l = t; l < L; l += nthreads) build_layer(l);
        } catch (...) {
          errs[size_t(t)] = std::current_exception();
        }
      });
    for (auto& th : pool) th.join();
    for (auto& e : errs)
      if (e) std::rethrow_exception(e);
    if (tied) {
      auto d = std::make_unique<DenseGpuLinear>(cublas, act, embed.get(), V, D, act_kind("cublas", act) + " (tied)");
      lm_dense = d.get();
      lm_head = std::move(d);
    } else {
      lm_head = src.linear(cublas, act, {"lm_head"}, {V}, D, report, mu);
      lm_dense = dynamic_cast<const DenseGpuLinear*>(lm_head.get());
      lm_i8 = dynamic_cast<const Int8GpuLinear*>(lm_head.get());
    }
    check_cuda(cudaDeviceSynchronize(), "loading weights");

    size_t wb = embed.bytes() + final_norm.bytes() + (tied ? 0 : lm_head->device_bytes());
    for (const Layer& Ly : layers)
      wb += Ly.attn_norm.bytes() + Ly.ffn_norm.bytes() + Ly.q_norm.bytes() + Ly.k_norm.bytes() +
            Ly.qkv->device_bytes() + Ly.o->device_bytes() + Ly.gate_up->device_bytes() + Ly.down->device_bytes();
    report.weight_bytes = wb;
    // A decode step (small M) streams the 16-bit path's weights, not the W4A8 kernel's copy.
    report.step_bytes = tied ? embed.bytes() : lm_head->device_bytes();
    for (const Layer& Ly : layers)
      for (GpuLinear* g : {Ly.qkv.get(), Ly.o.get(), Ly.gate_up.get(), Ly.down.get()})
        report.step_bytes += unwrap(g)->device_bytes();

    // ---- KV cache and scratch
    kv = DevBuf(kv_est, "KV cache");
    report.kv_bytes = kv_est;
    x = DevBuf(size_t(M * D) * 4, "activations");
    h = DevBuf(size_t(M * D) * 2, "activations");
    qkv = DevBuf(size_t(M * qkvN) * 2, "activations");
    q = DevBuf(size_t(M * qd) * 2, "activations");
    att = DevBuf(size_t(M * qd) * 2, "activations");
    this->o = DevBuf(size_t(M * D) * 2, "activations");
    gu = DevBuf(size_t(M * 2 * I) * 2, "activations");
    actb = DevBuf(size_t(M * I) * 2, "activations");
    logits = DevBuf(size_t(LR * V) * 4, "logits");
    arg_scratch = DevBuf(kern::argmax_scratch_bytes(LR), "argmax scratch");
    if (!lm_dense && !lm_i8) lm_tmp = DevBuf(size_t(LR * V) * 2, "logits");
    if (S_elems() > 0) {
      S = DevBuf(S_elems() * 4, "attention scores");
      P = DevBuf(S_elems() * 2, "attention probabilities");
    }
    partial = DevBuf(decode_scratch_bytes(), "attention partials");
    check_cuda(cudaMemset(partial.get(), 0, partial.bytes()), "cudaMemset (attention counters)");
    tok = DevBuf(size_t(M) * 4, "tokens");
    pos = DevBuf(size_t(M) * 4, "positions");
    slot = DevBuf(size_t(M) * 4, "slots");
    next = DevBuf(size_t(M) * 4, "next tokens");
    targets = DevBuf(size_t(LR) * 4, "targets");
    nll = DevBuf(size_t(LR) * 8, "nll");
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&h_stage), size_t(4 * M) * 4), "cudaMallocHost");
    report.scratch_bytes = x.bytes() + h.bytes() + qkv.bytes() + q.bytes() + att.bytes() + this->o.bytes() +
                           gu.bytes() + actb.bytes() + logits.bytes() + lm_tmp.bytes() + S.bytes() + P.bytes() +
                           partial.bytes() + cublas_ws.bytes() + (zipper_shared ? zipper_shared->bytes() : 0);
    setup_deq_ahead();
    report.act = act;
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    note_peak();
    if (!o.quiet) std::fprintf(stderr, "GPU engine: %s\n", report.summary().c_str());
  }

  // The prefill's dequantize ahead (DeqAhead), when every decoder layer's four linears are plain
  // ZipperEngine layers and the buffers fit beside everything else (the gate_up buffer is the shared
  // dequantize buffer, which the in-line path no longer needs at those M).
  void setup_deq_ahead() {
    const int mode = env_choice("MOSAIC_PREFILL_DEQ_AHEAD", 1, {0, 1, 2});
    if (mode == 0 || !zipper_shared || zipper_shared->bytes() == 0) return;
    size_t need[4] = {0, 0, 0, 0};
    for (const Layer& Ly : layers)
      for (int r = 0; r < 4; ++r) {
        if (!Ly.zq[r]) return;
        need[r] = std::max(need[r], size_t(Ly.zq[r]->N() * Ly.zq[r]->K()) * 2);
      }
    // Prefill chunks that never reach the dequantize path (all on the wgmma kernel) need no buffers.
    if (!all_dequantize_at(opt.prefill_chunk)) return;
    const bool shared_gu = zipper_shared->bytes() >= need[DeqAhead::kGateUp];
    const size_t extra = need[0] + need[1] + need[3] + (shared_gu ? 0 : need[2]);
    if (extra + (size_t(512) << 20) > device_free_bytes()) {
      report.notes.push_back("prefill dequantizes in line: its " + gib(extra) + " of dequantize-ahead buffers do not fit");
      return;
    }
    DeqAhead& d = deq_ahead;
    for (int r = 0; r < 4; ++r) {
      if (!(r == DeqAhead::kGateUp && shared_gu)) {
        d.own[r] = DevBuf(need[r], "dequantize-ahead buffer");
        d.buf[r] = d.own[r].get();
      }
      check_cuda(cudaEventCreateWithFlags(&d.ready[r], cudaEventDisableTiming), "cudaEventCreate");
    }
    check_cuda(cudaEventCreateWithFlags(&d.start, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&d.qkv_done, cudaEventDisableTiming), "cudaEventCreate");
    int least = 0, greatest = 0;
    check_cuda(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    check_cuda(cudaStreamCreateWithPriority(&d.side, cudaStreamDefault, mode == 2 ? greatest : least),
               "cudaStreamCreateWithPriority");
    report.scratch_bytes += extra;
    report.deq_ahead = true;
  }

  // Whether a layer's four linears all take the dequantize path at n rows (the same dispatch in every layer of
  // one shape, so layer 0 answers for all; its zq are set wherever dequantize ahead can be on).
  bool all_dequantize_at(int64_t n) const {
    for (const cuda::ZipperLinear* z : layers[0].zq)
      if (z->choose_path(n) != cuda::GemmPath::Dequant) return false;
    return true;
  }

  bool deq_ahead_for(int64_t n, int decode_B) const {
    return deq_ahead.on() && decode_B == 0 && !(skip & kSkipGemm) && all_dequantize_at(n);
  }

  // Role r's buffer. The shared one is read at each use, not kept: ZipperShared::reserve may replace it
  // (it does not after load: zipper_deq covers every decoder layer, and no other layer shares it).
  void* deq_ahead_buf(int r) const { return deq_ahead.buf[r] ? deq_ahead.buf[r] : zipper_shared->buffer(); }

  cuda::DType act_dtype() const { return act == Act::BF16 ? cuda::DType::BF16 : cuda::DType::F16; }

  // Side stream: dequantize role r's weights of layer l into its buffer, then mark it ready.
  void deq_ahead_issue(int l, int r) {
    const DeqAhead& d = deq_ahead;
    layers[size_t(l)].zq[r]->dequantize(deq_ahead_buf(r), act_dtype(), d.side);
    check_cuda(cudaEventRecord(d.ready[r], d.side), "cudaEventRecord (dequantize ahead)");
  }

  // Main stream: role r's GEMM of layer l on its dequantized buffer, once the side stream has written it.
  void deq_ahead_gemm(int l, int r, const void* X, void* Y, int64_t n) {
    const DeqAhead& d = deq_ahead;
    check_cuda(cudaStreamWaitEvent(stream, d.ready[r]), "cudaStreamWaitEvent (dequantize ahead)");
    layers[size_t(l)].zq[r]->gemm_dequantized(deq_ahead_buf(r), X, Y, n, act_dtype(), stream);
  }

  // ---- forward pieces ----------------------------------------------------------------------------
  // Decoder layers on rows [n] of x (embedded): prefill of one sequence (decode_B == 0: slot s at
  // pos0..) or one decode step (decode_B rows, slots 0..B-1, positions from `pos`). Leaves the
  // final-normed hidden in h.
  void run_layers(int64_t n, int decode_B, int s, int64_t pos0) {
    const float eps = cfg.rms_norm_eps;
    const bool small = !(skip & kSkipSmall), gemm = !(skip & kSkipGemm), attn = !(skip & kSkipAttention);
    const bool ahead = deq_ahead_for(n, decode_B);
    if (ahead) {  // layer 0's qkv, after whatever the main stream ran before (the buffers' last readers)
      check_cuda(cudaEventRecord(deq_ahead.start, stream), "cudaEventRecord (dequantize ahead)");
      check_cuda(cudaStreamWaitEvent(deq_ahead.side, deq_ahead.start), "cudaStreamWaitEvent (dequantize ahead)");
      deq_ahead_issue(0, DeqAhead::kQkv);
    }
    for (int l = 0; l < cfg.num_layers; ++l) {
      const Layer& Ly = layers[size_t(l)];
      const kern::RowQuant qkv_in = producer_rows(Ly.qkv_aq, n, kern::norm_codes_ok(D), stream);
      if (small)
        kern::add_rms_norm(act, x.as<float>(), l == 0 ? nullptr : this->o.get(), Ly.attn_norm.as<float>(), n, D, eps,
                           h.get(), stream, qkv_in);
      if (ahead) {
        deq_ahead_gemm(l, DeqAhead::kQkv, h.get(), qkv.get(), n);
        // The rest of this layer's weights and the next layer's qkv, beside RoPE and attention: every
        // buffer's previous reader ran before this qkv GEMM on the main stream.
        check_cuda(cudaEventRecord(deq_ahead.qkv_done, stream), "cudaEventRecord (dequantize ahead)");
        check_cuda(cudaStreamWaitEvent(deq_ahead.side, deq_ahead.qkv_done), "cudaStreamWaitEvent (dequantize ahead)");
        deq_ahead_issue(l, DeqAhead::kO);
        deq_ahead_issue(l, DeqAhead::kGateUp);
        deq_ahead_issue(l, DeqAhead::kDown);
        if (l + 1 < cfg.num_layers) deq_ahead_issue(l + 1, DeqAhead::kQkv);
      } else if (gemm) {
        run_linear(*Ly.qkv, Ly.qkv_aq, qkv_in, h.get(), qkv.get(), n, stream);
      }
      const float* qn = cfg.qk_norm ? Ly.q_norm.as<float>() : nullptr;
      const float* kn = cfg.qk_norm ? Ly.k_norm.as<float>() : nullptr;
      if (decode_B > 0) {
        // One kernel: q/k norm + RoPE + KV append + attention (counted as attention by the profile).
        if (attn)
          kern::attention_decode(act, qkv.get(), pos.as<int32_t>(), slot.as<int32_t>(), decode_B, dims, qn, kn, eps,
                                 inv_freq.as<float>(), kc(l), vc(l), partial.get(), slots, att.get(), stream,
                                 dec_keys);
      } else {
        if (small)
          kern::qkv_rope_cache(act, qkv.get(), n, pos.as<int32_t>(), slot.as<int32_t>(), dims, qn, kn, eps,
                               inv_freq.as<float>(), q.get(), kc(l), vc(l), stream);
        if (attn) prefill_attention(l, n, s, pos0);
      }
      if (ahead) {
        deq_ahead_gemm(l, DeqAhead::kO, att.get(), this->o.get(), n);
      } else if (gemm) {
        const auto* oq = (skip & kSkipOInputQuant) ? dynamic_cast<const ActQuantGpuLinear*>(Ly.o.get()) : nullptr;
        (oq ? oq->inner() : *Ly.o).forward(att.get(), this->o.get(), n, stream);  // (profile: without its quantize)
      }
      const kern::RowQuant gate_up_in = producer_rows(Ly.gate_up_aq, n, kern::norm_codes_ok(D), stream);
      if (small)
        kern::add_rms_norm(act, x.as<float>(), this->o.get(), Ly.ffn_norm.as<float>(), n, D, eps, h.get(), stream,
                           gate_up_in);
      if (ahead) deq_ahead_gemm(l, DeqAhead::kGateUp, h.get(), gu.get(), n);
      else if (gemm) run_linear(*Ly.gate_up, Ly.gate_up_aq, gate_up_in, h.get(), gu.get(), n, stream);
      const kern::RowQuant down_in = producer_rows(Ly.down_aq, n, kern::silu_codes_ok(I), stream);
      if (small && !(skip & kSkipSilu)) kern::silu_mul(act, gu.get(), n, I, actb.get(), stream, down_in);
      if (ahead) deq_ahead_gemm(l, DeqAhead::kDown, actb.get(), this->o.get(), n);
      else if (gemm) run_linear(*Ly.down, Ly.down_aq, down_in, actb.get(), this->o.get(), n, stream);
    }
    if (small) kern::add_rms_norm(act, x.as<float>(), this->o.get(), final_norm.as<float>(), n, D, eps, h.get(), stream);
  }

  void prefill_attention(int l, int64_t n, int s, int64_t pos0) {
    const size_t seq = size_t(s) * dims.Hkv * size_t(cap) * dims.hd * 2;
    attention_prefill(cublas, act, q.get(), static_cast<const char*>(kc(l)) + seq,
                      static_cast<const char*>(vc(l)) + seq, n, pos0, dims, S.as<float>(), P.get(), att.get(), stream);
  }

  // logits fp32 [rows, V] in `logits` from hidden rows of h starting at row r.
  void lm_rows(int64_t r, int64_t rows) {
    const void* hr = h.as<char>() + r * D * 2;
    if (lm_dense) {
      lm_dense->forward_f32(hr, logits.as<float>(), rows, stream);
    } else if (lm_i8) {
      lm_i8->forward_f32(hr, logits.as<float>(), rows, stream);
    } else {
      lm_head->forward(hr, lm_tmp.get(), rows, stream);
      kern::act_to_f32(act, lm_tmp.get(), logits.as<float>(), rows * V, stream);
    }
  }

  void check_slot(int s, int64_t T) const {
    MOSAIC_CHECK(s >= 0 && s < slots, "sequence slot ", s, " out of range [0, ", slots, ")");
    MOSAIC_CHECK(len[size_t(s)] + T <= cap, "context full: ", len[size_t(s)], " cached + ", T,
                 " new tokens exceed the KV cache capacity of ", cap, " tokens");
  }

  void check_tokens(const int32_t* tokens, int64_t T) const {
    for (int64_t t = 0; t < T; ++t)
      MOSAIC_CHECK(tokens[t] >= 0 && tokens[t] < V, "token id ", tokens[t], " at position ", t,
                   " is outside the vocabulary [0, ", V, ")");
  }

  // Prefill of one chunk (n <= M tokens) of sequence s: embeds, runs the layers, leaves hidden in h.
  void prefill_chunk(int s, const int32_t* tokens, int64_t n) {
    int32_t* ht = h_stage;
    int32_t* hp = h_stage + M;
    int32_t* hs = h_stage + 2 * M;
    check_cuda(cudaStreamSynchronize(stream), "sync");  // the staging buffer is reused
    const int64_t pos0 = len[size_t(s)];
    for (int64_t t = 0; t < n; ++t) {
      ht[t] = tokens[t];
      hp[t] = int32_t(pos0 + t);
      hs[t] = s;
    }
    check_cuda(cudaMemcpyAsync(tok.get(), ht, size_t(n) * 4, cudaMemcpyHostToDevice, stream), "upload tokens");
    check_cuda(cudaMemcpyAsync(pos.get(), hp, size_t(n) * 4, cudaMemcpyHostToDevice, stream), "upload positions");
    check_cuda(cudaMemcpyAsync(slot.get(), hs, size_t(n) * 4, cudaMemcpyHostToDevice, stream), "upload slots");
    kern::embedding(act, embed.get(), D, tok.as<int32_t>(), n, x.as<float>(), stream);
    run_layers(n, 0, s, pos0);
    len[size_t(s)] += n;
  }

  // One decode step for rows 0..B-1 from tok/pos/slot on the device: layers, LM head, argmax into
  // next, then tok = next, pos += 1 (so the graph can be replayed for the following step).
  void decode_body(int B) {
    if (!(skip & kSkipSmall)) kern::embedding(act, embed.get(), D, tok.as<int32_t>(), B, x.as<float>(), stream);
    run_layers(B, B, 0, 0);
    if (!(skip & kSkipHead)) {
      lm_rows(0, B);
      kern::argmax(logits.as<float>(), B, V, next.as<int32_t>(), arg_scratch.get(), stream);
    }
    kern::advance(next.as<int32_t>(), tok.as<int32_t>(), pos.as<int32_t>(), B, stream);
  }

  // Runs decode_body(B): eagerly on the first step for this (B, key bound) (workspaces of the GEMM
  // paths are allocated and their plans tuned then), captured into a CUDA graph on the second,
  // replayed after.
  void decode_step(int B) {
    int64_t longest = 0;
    for (int b = 0; b < B; ++b) longest = std::max(longest, len[size_t(b)]);
    dec_keys = kern::detail::decode_keys_bound(longest + 1, cap);
    const GraphKey key{B, dec_keys};
    auto it = graphs.find(key);
    if (it != graphs.end()) {
      check_cuda(cudaGraphLaunch(it->second, stream), "cudaGraphLaunch (decode step)");
      return;
    }
    if (!opt.cuda_graphs || !graphs_ok || eager_steps[key]++ == 0) {
      decode_body(B);
      return;
    }
    check_cuda(cudaStreamSynchronize(stream), "sync before capture");
    cudaGraph_t g = nullptr;
    check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    std::string err;
    try {
      decode_body(B);
    } catch (const Error& e) {
      err = e.what();
    }
    const cudaError_t ec = cudaStreamEndCapture(stream, &g);
    cudaGraphExec_t exec = nullptr;
    if (err.empty() && ec == cudaSuccess && g && cudaGraphInstantiate(&exec, g, 0) == cudaSuccess) {
      graphs[key] = exec;
      cudaGraphDestroy(g);
      check_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch (decode step)");
      return;
    }
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    graphs_ok = false;
    report.notes.push_back("CUDA graph capture of the decode step failed (" +
                           (err.empty() ? std::string(cudaGetErrorString(ec)) : err) + "); decoding eagerly");
    decode_body(B);
  }

  void stage_decode_inputs(const int32_t* tokens, int B) {
    check_cuda(cudaStreamSynchronize(stream), "sync");
    int32_t* ht = h_stage;
    int32_t* hp = h_stage + M;
    int32_t* hs = h_stage + 2 * M;
    for (int b = 0; b < B; ++b) {
      ht[b] = tokens[b];
      hp[b] = int32_t(len[size_t(b)]);
      hs[b] = b;
    }
    check_cuda(cudaMemcpyAsync(tok.get(), ht, size_t(B) * 4, cudaMemcpyHostToDevice, stream), "upload tokens");
    check_cuda(cudaMemcpyAsync(pos.get(), hp, size_t(B) * 4, cudaMemcpyHostToDevice, stream), "upload positions");
    check_cuda(cudaMemcpyAsync(slot.get(), hs, size_t(B) * 4, cudaMemcpyHostToDevice, stream), "upload slots");
  }
};

GpuModel::GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuModel::GpuModel(GpuModel&&) noexcept = default;
GpuModel& GpuModel::operator=(GpuModel&&) noexcept = default;
GpuModel::~GpuModel() = default;

GpuModel GpuModel::load(const std::filesystem::path& dir, const GpuOptions& o) {
  require_gpu();
  const ModelConfig cfg = ModelConfig::load(dir);
  const Checkpoint ckpt = Checkpoint::open(dir);
  return from_checkpoint(ckpt, cfg, o);
}

GpuModel GpuModel::from_checkpoint(const Checkpoint& ckpt, const ModelConfig& cfg, const GpuOptions& o) {
  auto impl = std::make_unique<Impl>();
  const bool quantized = is_mosaicquant(cfg);
  CheckpointSource src(ckpt, quantized);
  impl->build(cfg, o, src, quantized, quantized ? activation_quant(cfg) : ActQuant{});
  return GpuModel(std::move(impl));
}

GpuModel GpuModel::random(const ModelConfig& cfg, const RandomWeights& rw, const GpuOptions& o) {
  auto impl = std::make_unique<Impl>();
  MOSAIC_CHECK(rw.act_bits == 16 || (rw.act_bits == 8 && rw.quantized),
               "random weights: act_bits must be 16, or 8 with quantized weights (got ", rw.act_bits, ")");
  MOSAIC_CHECK(!rw.int_scales || rw.act_bits == 8, "random weights: integer scales are for W4A8 models (act_bits 8)");
  RandomSource src(rw);
  impl->build(cfg, o, src, rw.quantized, ActQuant{rw.act_bits});
  return GpuModel(std::move(impl));
}

const ModelConfig& GpuModel::config() const { return impl_->cfg; }
Act GpuModel::act() const { return impl_->act; }
int GpuModel::max_batch() const { return impl_->slots; }
int64_t GpuModel::capacity() const { return impl_->cap; }
int64_t GpuModel::vocab_size() const { return impl_->V; }
const GpuLoadReport& GpuModel::load_report() const { return impl_->report; }

GpuMemory GpuModel::memory() const {
  impl_->note_peak();
  GpuMemory m;
  m.weights = impl_->report.weight_bytes;
  m.kv_cache = impl_->report.kv_bytes;
  m.scratch = impl_->report.scratch_bytes;
  m.peak_used = impl_->peak;
  m.total = device_total_bytes();
  return m;
}

int64_t GpuModel::length(int s) const {
  MOSAIC_CHECK(s >= 0 && s < impl_->slots, "sequence slot ", s, " out of range [0, ", impl_->slots, ")");
  return impl_->len[size_t(s)];
}
void GpuModel::reset(int s) {
  MOSAIC_CHECK(s >= 0 && s < impl_->slots, "sequence slot ", s, " out of range [0, ", impl_->slots, ")");
  impl_->len[size_t(s)] = 0;
}
void GpuModel::reset_all() { std::fill(impl_->len.begin(), impl_->len.end(), 0); }
void GpuModel::synchronize() const { check_cuda(cudaStreamSynchronize(impl_->stream), "cudaStreamSynchronize"); }

void GpuModel::forward(int s, const int32_t* tokens, int64_t T, float* logits, Logits which) {
  Impl& m = *impl_;
  MOSAIC_CHECK(T > 0, "forward: no tokens");
  m.check_slot(s, T);
  m.check_tokens(tokens, T);
  const int64_t chunk = m.opt.prefill_chunk, V = m.V;
  for (int64_t b = 0; b < T; b += chunk) {
    const int64_t n = std::min(chunk, T - b);
    m.prefill_chunk(s, tokens + b, n);
    if (which == Logits::All) {
      for (int64_t r0 = 0; r0 < n; r0 += m.LR) {
        const int64_t rows = std::min(m.LR, n - r0);
        m.lm_rows(r0, rows);
        check_cuda(cudaMemcpyAsync(logits + (b + r0) * V, m.logits.get(), size_t(rows * V) * 4,
                                   cudaMemcpyDeviceToHost, m.stream),
                   "download logits");
      }
    } else if (which == Logits::Last && b + n == T) {
      m.lm_rows(n - 1, 1);
      check_cuda(cudaMemcpyAsync(logits, m.logits.get(), size_t(V) * 4, cudaMemcpyDeviceToHost, m.stream),
                 "download logits");
    }
  }
  synchronize();
  m.note_peak();
}

void GpuModel::forward_scored(int s, const int32_t* tokens, int64_t T, const int32_t* targets, double* nll,
                              const std::function<void(int64_t, int64_t, const float*)>& on_block) {
  Impl& m = *impl_;
  MOSAIC_CHECK(T > 0, "forward: no tokens");
  m.check_slot(s, T);
  m.check_tokens(tokens, T);
  const int64_t chunk = m.opt.prefill_chunk, V = m.V;
  std::vector<float> host_logits;
  if (on_block) host_logits.resize(size_t(m.LR * V));
  for (int64_t b = 0; b < T; b += chunk) {
    const int64_t n = std::min(chunk, T - b);
    m.prefill_chunk(s, tokens + b, n);
    for (int64_t r0 = 0; r0 < n; r0 += m.LR) {
      const int64_t rows = std::min(m.LR, n - r0);
      m.lm_rows(r0, rows);
      if (targets) {
        check_cuda(cudaMemcpyAsync(m.targets.get(), targets + b + r0, size_t(rows) * 4, cudaMemcpyHostToDevice, m.stream),
                   "upload targets");
        kern::row_nll(m.logits.as<float>(), rows, V, m.targets.as<int32_t>(), m.nll.as<double>(), m.stream);
        check_cuda(cudaMemcpyAsync(nll + b + r0, m.nll.get(), size_t(rows) * 8, cudaMemcpyDeviceToHost, m.stream),
                   "download nll");
      }
      if (on_block) {
        check_cuda(cudaMemcpyAsync(host_logits.data(), m.logits.get(), size_t(rows * V) * 4, cudaMemcpyDeviceToHost,
                                   m.stream),
                   "download logits");
      }
      synchronize();  // targets / logits buffers are reused by the next block
      if (on_block) on_block(b + r0, rows, host_logits.data());
    }
  }
  m.note_peak();
}

void GpuModel::decode(const int32_t* tokens, int B, float* logits, int32_t* next, float temperature, uint64_t seed) {
  Impl& m = *impl_;
  MOSAIC_CHECK(B >= 1 && B <= m.slots, "decode: batch ", B, " out of range [1, ", m.slots, "]");
  MOSAIC_CHECK(temperature >= 0 && std::isfinite(temperature), "temperature must be >= 0, got ", temperature);
  for (int b = 0; b < B; ++b) m.check_slot(b, 1);
  m.check_tokens(tokens, B);
  m.stage_decode_inputs(tokens, B);
  m.decode_step(B);
  if (temperature > 0)
    kern::sample_temperature(m.logits.as<float>(), B, m.V, temperature, seed, uint64_t(m.len[0]), m.next.as<int32_t>(),
                             m.stream);
  if (logits)
    check_cuda(cudaMemcpyAsync(logits, m.logits.get(), size_t(B * m.V) * 4, cudaMemcpyDeviceToHost, m.stream),
               "download logits");
  if (next) check_cuda(cudaMemcpyAsync(next, m.next.get(), size_t(B) * 4, cudaMemcpyDeviceToHost, m.stream), "download ids");
  synchronize();
  for (int b = 0; b < B; ++b) ++m.len[size_t(b)];
}

namespace {
// A profile's changes to the model, undone when it ends, normally or by an exception: the skip mask,
// the sequences' lengths and the CUDA-graph setting.
struct ProfileScope {
  GpuModel::Impl& m;
  const std::vector<int64_t> len;
  const bool graphs;
  ProfileScope(GpuModel::Impl& model, unsigned skip) : m(model), len(model.len), graphs(model.opt.cuda_graphs) {
    m.skip = skip;
  }
  ~ProfileScope() {
    m.skip = 0;
    m.opt.cuda_graphs = graphs;
    m.len = len;
  }
};
}  // namespace

double GpuModel::profile_decode(int B, unsigned skip, bool graphs, int steps) {
  Impl& m = *impl_;
  MOSAIC_CHECK(B >= 1 && B <= m.slots && steps >= 1 && m.cap > steps + 1, "profile_decode: bad arguments");
  const ProfileScope scope(m, skip);
  // Positions near the end of the cache (attention over ~capacity keys), advanced `steps` times.
  for (int b = 0; b < B; ++b) m.len[size_t(b)] = m.cap - steps - 1;
  std::vector<int32_t> toks(size_t(B), 0);
  for (auto& [b, g] : m.graphs) cudaGraphExecDestroy(g);
  m.graphs.clear();
  m.eager_steps.clear();
  m.opt.cuda_graphs = graphs;
  m.stage_decode_inputs(toks.data(), B);
  m.decode_step(B);  // eager (warm-up)
  m.stage_decode_inputs(toks.data(), B);
  m.decode_step(B);  // captured
  m.stage_decode_inputs(toks.data(), B);
  synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) m.decode_step(B);
  synchronize();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
  for (auto& [b, g] : m.graphs) cudaGraphExecDestroy(g);
  m.graphs.clear();
  m.eager_steps.clear();
  return ms;
}

double GpuModel::profile_prefill(int64_t T, unsigned skip, int reps) {
  Impl& m = *impl_;
  MOSAIC_CHECK(T >= 1 && T <= m.cap && reps >= 1, "profile_prefill: bad arguments");
  const ProfileScope scope(m, skip);
  std::vector<int32_t> toks(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) toks[size_t(t)] = int32_t((t * 7919 + 13) % m.V);
  m.len[0] = 0;
  forward(0, toks.data(), T, nullptr, Logits::None);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) {
    m.len[0] = 0;
    forward(0, toks.data(), T, nullptr, Logits::None);
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

void GpuModel::generate_greedy(const int32_t* first, int B, int steps, int32_t* out) {
  Impl& m = *impl_;
  MOSAIC_CHECK(B >= 1 && B <= m.slots, "generate: batch ", B, " out of range [1, ", m.slots, "]");
  MOSAIC_CHECK(steps >= 0, "generate: steps must be >= 0");
  if (steps == 0) return;
  for (int b = 0; b < B; ++b) m.check_slot(b, steps);
  m.check_tokens(first, B);
  m.stage_decode_inputs(first, B);
  std::vector<int32_t> ids(size_t(steps) * B);
  int32_t* pinned = nullptr;
  check_cuda(cudaMallocHost(reinterpret_cast<void**>(&pinned), ids.size() * 4), "cudaMallocHost");
  try {
    for (int st = 0; st < steps; ++st) {
      m.decode_step(B);
      check_cuda(cudaMemcpyAsync(pinned + size_t(st) * B, m.next.get(), size_t(B) * 4, cudaMemcpyDeviceToHost, m.stream),
                 "download ids");
      for (int b = 0; b < B; ++b) ++m.len[size_t(b)];
    }
    synchronize();
  } catch (...) {
    cudaFreeHost(pinned);
    throw;
  }
  std::memcpy(out, pinned, ids.size() * 4);
  cudaFreeHost(pinned);
  m.note_peak();
}

}  // namespace mosaic::gpu
