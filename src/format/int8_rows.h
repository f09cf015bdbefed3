// 8-bit weights with one scale per row: the int8 LM head of a MosaicQuant checkpoint
// (`mosaic quantize --lm-head-int8`; docs/format.md "8-bit LM head"). A weight W [rows, cols]
// stored under a prefix (only "lm_head" today) as
//
//   <prefix>.weight_int8   I8   [rows, cols]   row-major codes q
//   <prefix>.weight_scale  F16  [rows]         one scale s per row
//
//   W_hat[r][c] = float(s[r]) * float(q[r][c])
//
//   row r:  s[r] (fp16) | q[r][0] q[r][1] ... q[r][cols-1]   (int8 each)
//
// The producer's rule (symmetric, round to nearest, per row):
//   s = fp16_round(max_c |W[r][c]| / 127); s = 1 when that is 0 (a row of zeros, or one too small
//   for an fp16 scale: its codes are then all 0)
//   q = clamp(round_half_away_from_zero(W[r][c] / float(s)), -127, 127)   with the fp16-rounded s
// so every element is within s/2 of its value. Readers decode any I8 code (-128 included) by the
// formula; mosaic writes -127..127.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mosaic {

class Checkpoint;
class ShardedWriter;

// Quantizes W [rows, cols] by the rule above into q (rows * cols) and scale_f16 (rows, fp16 bits).
// Throws mosaic::Error naming `what` and the row (numbered from first_row: W may be a slice of a
// larger matrix) when a value is not finite or a row's scale does not fit FP16 (max |W| > ~8.3e6).
void quantize_int8_rows(const float* W, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale_f16,
                        const std::string& what = "weights", int64_t first_row = 0);
void quantize_int8_rows(const float* W, int64_t rows, int64_t cols, std::vector<int8_t>& q,
                        std::vector<uint16_t>& scale_f16, const std::string& what = "weights");

// W_hat [rows, cols] in FP32.
std::vector<float> dequantize_int8_rows(const int8_t* q, const uint16_t* scale_f16, int64_t rows, int64_t cols);
std::vector<float> dequantize_int8_rows(const std::vector<int8_t>& q, const std::vector<uint16_t>& scale_f16,
                                        int64_t rows, int64_t cols);

// The tensors of one int8 weight, read back from a checkpoint.
struct Int8Rows {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> q;          // [rows, cols]
  std::vector<uint16_t> scale;    // [rows] fp16 bits
  std::vector<float> dequantize() const { return dequantize_int8_rows(q, scale, rows, cols); }
};

// "<prefix>.weight_int8" / "<prefix>.weight_scale".
std::string int8_rows_name(const std::string& prefix);
std::string int8_rows_scale_name(const std::string& prefix);

// Adds <prefix>.weight_int8 (I8 [rows, cols]) and <prefix>.weight_scale (F16 [rows]).
void add_int8_rows(ShardedWriter& w, const std::string& prefix, int64_t rows, int64_t cols, std::string q_bytes,
                   std::string scale_bytes);

// True when the checkpoint stores <prefix>.weight_int8.
bool has_int8_rows(const Checkpoint& ckpt, const std::string& prefix);

// Reads <prefix>.weight_int8 and .weight_scale, checking dtypes (I8, F16) and shapes ([rows, cols],
// [rows]), that every scale is finite, and that the checkpoint holds no other weight for the prefix
// (.weight or .qweight); each error names the tensor with expected and actual. Both engines load
// the 8-bit head through it.
Int8Rows read_int8_rows(const Checkpoint& ckpt, const std::string& prefix, int64_t rows, int64_t cols);

}  // namespace mosaic
