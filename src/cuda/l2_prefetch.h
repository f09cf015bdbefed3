// L2 look-ahead of the decode step (docs/kernels.md "L2 look-ahead"): a kernel that leaves DRAM
// idle part of its time (batch-1 attention reads ~8 MB in ~13 us; qkv and o are short kernels
// that spend much of their time ramping up) asks the memory system, at its start, to bring weights
// that a LATER kernel will read into L2 (cp.async.bulk.prefetch.L2: one instruction per piece,
// fire and forget, no registers or shared memory held). The later kernel's loads then hit L2.
//
// What to prefetch is a list of spans, each `rows` pieces of `bytes` bytes, piece i at
// base + i * pitch: a whole buffer is one row; the first fraction of every 16-output row of a
// GEMM's codes (what the stream kernel's warps read first, all rows at once) is N/16 rows of
// that fraction. The host cuts the spans into pieces of <= 64 KB (for_each_l2_piece), uploads
// them as a table (L2AheadTable), and the issuing kernel's CTAs share the table evenly
// (l2_prefetch.cuh: one warp per CTA, a few registers).
//
// Plain C++, so the CPU tests check the cutting exactly.
#pragma once
#include <cstdint>
#include <vector>

namespace mosaic::cuda {

struct L2Span {
  const void* base = nullptr;
  uint32_t rows = 0;   // pieces
  uint32_t bytes = 0;  // bytes per piece, a multiple of 16 (the instruction's unit)
  uint64_t pitch = 0;  // bytes from one piece to the next
  uint64_t total() const { return uint64_t(rows) * bytes; }
};

struct L2Prefetch {
  static constexpr int kMaxSpans = 6;
  static constexpr uint32_t kMaxPiece = 64 * 1024;  // bytes per instruction (a piece is cut in these)
  L2Span span[kMaxSpans];
  int n = 0;

  // Adds rows x bytes at base (pitch apart); bytes is rounded down to a multiple of 16 and the
  // span dropped if that leaves nothing or the base is not 16-byte aligned (the instruction's
  // rules: a prefetch is a hint, so a span it cannot take is skipped, never an error). Returns
  // false when the list is full.
  bool add(const void* base, uint64_t rows, uint64_t bytes, uint64_t pitch) {
    bytes &= ~uint64_t(15);
    if (!base || rows == 0 || bytes == 0 || (reinterpret_cast<uintptr_t>(base) & 15) != 0) return true;
    if (rows > 0xffffffffu || bytes > 0xffffffffu) return true;
    if (rows > 1 && (pitch & 15) != 0) return true;
    if (n == kMaxSpans) return false;
    span[n++] = L2Span{base, uint32_t(rows), uint32_t(bytes), pitch};
    return true;
  }
  bool add(const void* base, uint64_t bytes) { return add(base, 1, bytes, 0); }
  bool empty() const { return n == 0; }
  uint64_t total() const {
    uint64_t t = 0;
    for (int i = 0; i < n; ++i) t += span[i].total();
    return t;
  }
};

// Part `part` of `parts` (a CTA of the issuing kernel) calls f(address, bytes) for each piece of
// its share: the concatenation of the spans cut into `parts` runs of equal length (multiples of
// 16 bytes; the last may be shorter, later ones empty), each run cut at piece boundaries and
// into at most kMaxPiece bytes per call. Together the parts cover every byte exactly once.
template <typename F>
void for_each_l2_piece(const L2Prefetch& pf, uint32_t part, uint32_t parts, F&& f) {
  const uint64_t total = pf.total();
  if (parts == 0 || total == 0) return;
  const uint64_t per = ((total + parts - 1) / parts + 15) & ~uint64_t(15);
  uint64_t lo = uint64_t(part) * per;
  const uint64_t hi = lo + per < total ? lo + per : total;
  uint64_t off = 0;  // start of span i in the concatenation
  for (int i = 0; i < pf.n && lo < hi; ++i) {
    const L2Span& s = pf.span[i];
    const uint64_t end = off + s.total();
    if (lo < end) {
      uint64_t row = (lo - off) / s.bytes, in = (lo - off) - row * s.bytes;
      const uint64_t stop = hi < end ? hi : end;
      while (lo < stop) {
        uint64_t len = s.bytes - in;
        if (len > stop - lo) len = stop - lo;
        const char* p = static_cast<const char*>(s.base) + row * s.pitch + in;
        for (uint64_t c = 0; c < len; c += L2Prefetch::kMaxPiece)
          f(static_cast<const void*>(p + c), uint32_t(len - c < L2Prefetch::kMaxPiece ? len - c : L2Prefetch::kMaxPiece));
        lo += len;
        ++row;
        in = 0;
      }
    }
    off = end;
  }
}

// The form kernels read: the pieces of an L2Prefetch in a device table (L2AheadTable uploads it),
// 16 bytes each, every one <= kMaxPiece bytes.
struct L2Piece {
  const void* p;
  uint32_t bytes;
  uint32_t pad;
};

inline std::vector<L2Piece> l2_pieces(const L2Prefetch& pf) {
  std::vector<L2Piece> v;
  for_each_l2_piece(pf, 0, 1, [&](const void* p, uint32_t bytes) { v.push_back(L2Piece{p, bytes, 0}); });
  return v;
}

// A piece table in device memory (host side; l2_ahead.cpp). Move-only; empty by default.
class L2AheadTable {
 public:
  L2AheadTable() = default;
  ~L2AheadTable();
  L2AheadTable(L2AheadTable&& o) noexcept;
  L2AheadTable& operator=(L2AheadTable&& o) noexcept;
  L2AheadTable(const L2AheadTable&) = delete;
  L2AheadTable& operator=(const L2AheadTable&) = delete;
  void set(const L2Prefetch& pf);  // replaces the table (throws mosaic::Error on a CUDA failure)
  const L2Piece* data() const { return d_; }
  int size() const { return n_; }
  uint64_t bytes() const { return bytes_; }  // bytes the table prefetches

 private:
  L2Piece* d_ = nullptr;
  int n_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace mosaic::cuda
