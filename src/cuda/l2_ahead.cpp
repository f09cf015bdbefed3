// Host side of the L2 look-ahead's piece tables (cuda/l2_prefetch.h).
#include <cuda_runtime.h>

#include <utility>

#include "cuda/host_util.h"
#include "cuda/l2_prefetch.h"

namespace mosaic::cuda {

L2AheadTable::~L2AheadTable() {
  if (d_) cudaFree(d_);
}

L2AheadTable::L2AheadTable(L2AheadTable&& o) noexcept
    : d_(std::exchange(o.d_, nullptr)), n_(std::exchange(o.n_, 0)), bytes_(std::exchange(o.bytes_, 0)) {}

L2AheadTable& L2AheadTable::operator=(L2AheadTable&& o) noexcept {
  if (this != &o) {
    if (d_) cudaFree(d_);
    d_ = std::exchange(o.d_, nullptr);
    n_ = std::exchange(o.n_, 0);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void L2AheadTable::set(const L2Prefetch& pf) {
  *this = L2AheadTable{};
  const std::vector<L2Piece> v = l2_pieces(pf);
  if (v.empty()) return;
  d_ = host::upload(v, "L2 look-ahead table");
  n_ = int(v.size());
  bytes_ = pf.total();
}

}  // namespace mosaic::cuda
