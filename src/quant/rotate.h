// Offline orthogonal rotations folded into the weights (QuaRot / SpinQuant "R1" and "R2"), so a
// rotated model is an ordinary checkpoint: the same ops, the same logits (up to rounding), but
// activations and weights with their outlier channels spread over all channels, which 4-bit
// per-group weights and per-token 4/8-bit activations quantize with less error.
//
// R1, on the residual stream (Q: hidden x hidden, orthogonal). RMSNorm(x) = x / rms(x) * gamma
// commutes with Q once gamma is folded into the linears that read the norm's output, because
// rms(x Q) = rms(x). So, with the residual stream x' = x Q:
//   input_layernorm gamma       -> q/k/v input columns, norm weight set to 1
//   post_attention_layernorm    -> gate/up input columns, norm weight set to 1
//   final norm gamma            -> lm_head input columns, norm weight set to 1
//   embed  <- embed Q                         (rows are tokens: x' = x Q from the start)
//   q/k/v/gate/up  W <- W diag(gamma) Q       (they read x' / rms: (x Q) (W Q)^T = x W^T)
//   o/down         W <- Q^T W                 (they write the residual: y Q = a (Q^T W)^T)
//   lm_head        <- lm_head diag(gamma_f) Q (tied embeddings become untied: embed has no gamma)
// Qwen3's q_norm / k_norm act on q / k after the projection, which R1 leaves unchanged.
//
// R2, per attention head (H: head_dim x head_dim, orthogonal, the same for every head): v_proj's
// output rows of each kv head g become H^T V_g, so v_g' = v_g H; attention mixes positions, not
// channels, so each head's output is a_h H, and o_proj's input columns of each query head become
// O_h H: a_h H (O_h H)^T = a_h O_h^T. Exact with grouped-query attention because every head uses
// the same H.
//
// Q: a randomized Hadamard matrix H_n diag(+-1) / sqrt(n) when n is a power of two (spreads any
// single channel evenly over all n); else n = 2^a * m (m odd) and Q = kron(randomized Hadamard
// 2^a, random orthogonal m) (SmolLM2's 576 = 64 x 9), or, with RotationMatrix::kRandom, a random
// orthogonal n x n (QR of a Gaussian). Seeded: the same seed gives the same matrices.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/hf_config.h"

namespace mosaic {

enum class RotationKind { kNone, kR1, kR1R2 };
RotationKind parse_rotation(const std::string& name);  // none | r1 | r1r2; else a mosaic::Error
const char* rotation_name(RotationKind k);             // "none", "r1", "r1r2"

enum class RotationMatrix { kHadamard, kRandom };
RotationMatrix parse_rotation_matrix(const std::string& name);  // hadamard | random
const char* rotation_matrix_name(RotationMatrix m);

struct RotationOptions {
  RotationKind kind = RotationKind::kNone;
  RotationMatrix matrix = RotationMatrix::kHadamard;
  uint64_t seed = 0;
  // Residual-stream channels left out of R1 (Q is the identity on them; ascending, distinct).
  // Why: a model with "massive activations" (SmolLM2-135M: channel 507 holds 95-99% of x / rms
  // for ~4% of the tokens from layer 2 on) has, once R1 spreads such a token over every channel,
  // its whole weight quantization error multiplied by the huge normalized input, where the
  // unrotated model's tiny norm weight on that channel hid it. A kept channel keeps its norm
  // weight in the norm instead of the linears, which is still exact: diag(w) commutes with a Q
  // that is the identity wherever w != 1.
  std::vector<int64_t> keep_channels;
};

// A dense n x n orthogonal matrix, row-major, float64.
struct Orthogonal {
  int64_t n = 0;
  std::vector<double> q;   // [n, n]
  std::string describe;    // "hadamard(64) x orthogonal(9)", for quantization_config
};

// Randomized Hadamard (n a power of two): Sylvester H_n with columns multiplied by random signs,
// divided by sqrt(n).
Orthogonal random_hadamard(int64_t n, uint64_t seed);
// Random orthogonal (Haar): Householder QR of an n x n Gaussian, with the signs of R's diagonal
// moved into Q so the distribution does not depend on the QR's sign convention.
Orthogonal random_orthogonal(int64_t n, uint64_t seed);
// kron(a, b): [na*nb, na*nb], (i_a * nb + i_b, j_a * nb + j_b) = a(i_a, j_a) * b(i_b, j_b).
Orthogonal kronecker(const Orthogonal& a, const Orthogonal& b);
// The matrix of size n that `matrix` asks for (see the top of this file).
Orthogonal make_rotation(int64_t n, RotationMatrix matrix, uint64_t seed);
// max |Q Q^T - I| (tests, and a check before folding anything).
double orthogonality_error(const Orthogonal& q);

// Q of size n that is the identity on the channels in `keep` (ascending, distinct) and
// make_rotation(n - |keep|) on the others, in their order.
Orthogonal make_rotation_keeping(int64_t n, const std::vector<int64_t>& keep, RotationMatrix matrix, uint64_t seed);

// The two matrices of a rotation: R1 (hidden) and, for r1r2, R2 (head_dim). R2 uses seed + 1.
struct ModelRotation {
  RotationOptions opt;
  Orthogonal r1, r2;  // r2.n == 0 without R2
  nlohmann::json info() const;  // quantization_config.rotation (docs/format.md)
};
ModelRotation make_model_rotation(const ModelConfig& cfg, const RotationOptions& opt);

// In-place folds on FP32 tensors (HF layout [N, K], y = x W^T), products in float64.
// W <- W diag(gamma) Q (gamma may be empty = ones): a linear reading the rotated residual stream.
void rotate_input_side(std::vector<float>& W, int64_t N, int64_t K, const std::vector<float>& gamma,
                       const Orthogonal& q);
// W <- Q^T W: a linear writing the residual stream.
void rotate_output_side(std::vector<float>& W, int64_t N, int64_t K, const Orthogonal& q);

// Writes the rotated model as a complete F32 checkpoint directory: config.json (the input's, with
// tie_word_embeddings false: lm_head.weight is always written), model.safetensors (shards past
// 2 GiB) and the tokenizer files. Works layer by layer (one layer's weights in memory). Throws
// mosaic::Error on a model it cannot rotate (biases, head_dim not dividing, unknown tensors).
// Returns ModelRotation::info() of the rotation applied.
nlohmann::json rotate_checkpoint(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir,
                       const RotationOptions& opt, bool quiet = true);

}  // namespace mosaic
