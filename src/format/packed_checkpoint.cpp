#include "format/packed_checkpoint.h"

#include <cstring>

#include "util/error.h"

namespace mosaic {

namespace {

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Copies a tensor after checking its dtype (and shape when given); data may be unaligned in
// foreign files, hence the copy.
template <typename T>
std::vector<T> copy_tensor(const Checkpoint& ckpt, const std::string& name, DType dtype,
                           const std::vector<int64_t>& shape = {}) {
  const TensorView& v = shape.empty() ? ckpt.get(name) : ckpt.get(name, shape);
  MOSAIC_CHECK(v.dtype == dtype, "tensor '", name, "' is ", dtype_name(v.dtype), " ", v.shape_str(), ", expected ",
               dtype_name(dtype));
  std::vector<T> out(v.nbytes / sizeof(T));
  if (v.nbytes) std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

}  // namespace

void add_packed_linear(ShardedWriter& w, const std::string& prefix, const PackedLinear& p) {
  validate(p, prefix);
  const int64_t N = p.N, K = p.K, ng = p.num_groups();
  w.add(prefix + ".qweight", DType::U8, {N, K / 2}, bytes_of(p.qweight));
  w.add(prefix + ".scales", DType::F16, {N, ng}, bytes_of(p.scales));
  if (!p.symmetric) w.add(prefix + ".qzeros", DType::U8, {N, ng}, bytes_of(p.qzeros));
  if (!p.grid.empty()) w.add(prefix + ".qgrid", DType::F32, {16}, bytes_of(p.grid));
  if (p.has_residual()) {
    const int64_t nnzb = p.num_blocks_kept(), Br = p.block_rows, Bc = p.block_cols;
    w.add(prefix + ".res_rowptr", DType::I32, {N / Br + 1}, bytes_of(p.res_rowptr));
    w.add(prefix + ".res_colidx", DType::I32, {nnzb}, bytes_of(p.res_colidx));
    w.add(prefix + ".res_qvalues", DType::U8, {nnzb, Br, Bc / 2}, bytes_of(p.res_qvalues));
    w.add(prefix + ".res_scales", DType::F16, {nnzb, Br}, bytes_of(p.res_scales));
  }
}

bool has_packed_linear(const Checkpoint& ckpt, const std::string& prefix) { return ckpt.has(prefix + ".qweight"); }

PackedLinear read_packed_linear(const Checkpoint& ckpt, const std::string& prefix, int64_t N, int64_t K) {
  const TensorView& s = ckpt.get(prefix + ".scales");
  MOSAIC_CHECK(s.dtype == DType::F16 && s.shape.size() == 2 && s.shape[0] == N && s.shape[1] > 0 &&
                   K % s.shape[1] == 0,
               "tensor '", prefix, ".scales' is ", dtype_name(s.dtype), " ", s.shape_str(), ", expected F16 [", N,
               ", K/G] with K = ", K);
  PackedLinear p;
  p.N = N;
  p.K = K;
  p.group = int(K / s.shape[1]);
  p.qweight = copy_tensor<uint8_t>(ckpt, prefix + ".qweight", DType::U8, {N, K / 2});
  p.scales = copy_tensor<uint16_t>(ckpt, prefix + ".scales", DType::F16);
  if (ckpt.has(prefix + ".qzeros")) {
    p.symmetric = false;
    p.qzeros = copy_tensor<uint8_t>(ckpt, prefix + ".qzeros", DType::U8, {N, K / p.group});
  }
  if (ckpt.has(prefix + ".qgrid")) p.grid = copy_tensor<float>(ckpt, prefix + ".qgrid", DType::F32, {16});
  if (ckpt.has(prefix + ".res_colidx")) {
    const TensorView& rp = ckpt.get(prefix + ".res_rowptr");
    const TensorView& qv = ckpt.get(prefix + ".res_qvalues");
    MOSAIC_CHECK(rp.shape.size() == 1 && rp.shape[0] >= 2 && N % (rp.shape[0] - 1) == 0 && qv.shape.size() == 3,
                 "tensors '", prefix, ".res_rowptr' ", rp.shape_str(), " / res_qvalues ", qv.shape_str(),
                 " do not describe a block grid of N = ", N);
    p.block_rows = int(N / (rp.shape[0] - 1));
    p.block_cols = int(qv.shape[2] * 2);
    const int64_t nnzb = qv.shape[0];
    p.res_rowptr = copy_tensor<int32_t>(ckpt, prefix + ".res_rowptr", DType::I32, {N / p.block_rows + 1});
    p.res_colidx = copy_tensor<int32_t>(ckpt, prefix + ".res_colidx", DType::I32, {nnzb});
    p.res_qvalues = copy_tensor<uint8_t>(ckpt, prefix + ".res_qvalues", DType::U8, {nnzb, p.block_rows, p.block_cols / 2});
    p.res_scales = copy_tensor<uint16_t>(ckpt, prefix + ".res_scales", DType::F16, {nnzb, p.block_rows});
  }
  validate(p, prefix);
  return p;
}

}  // namespace mosaic
