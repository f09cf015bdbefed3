// safetensors reading, writing and sharded checkpoints. See safetensors.h for the format.
// Reading trusts nothing in the file: every length and offset is checked before it is used,
// with overflow-safe arithmetic, so a corrupt or hostile file can only produce a mosaic::Error.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// ---- dtypes ---------------------------------------------------------------------------------

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeInfo, 14> kDTypes = {{
    {DType::F64, "F64", 8},   {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},           {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1}, {DType::U16, "U16", 2},         {DType::U32, "U32", 4},
    {DType::U64, "U64", 8},   {DType::F8_E4M3, "F8_E4M3", 1},
}};

const DTypeInfo& info(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d;
  fail("invalid dtype value ", int(t));
}

// a * b for sizes, or false when it overflows.
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// numel * element size, or fail (the writer and reader share this so they agree on limits).
uint64_t checked_nbytes(const std::vector<int64_t>& shape, DType dtype, const std::string& where) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    MOSAIC_CHECK(d >= 0, where, ": negative dimension in shape ", shape_to_string(shape));
    MOSAIC_CHECK(mul_ok(n, uint64_t(d), &n), where, ": shape ", shape_to_string(shape),
                 " overflows the element count");
  }
  uint64_t bytes;
  MOSAIC_CHECK(mul_ok(n, dtype_size(dtype), &bytes), where, ": shape ", shape_to_string(shape),
               " overflows the byte count");
  return bytes;
}
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }

DType dtype_from_name(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.type;
  fail("unknown dtype '", name, "'");
}

// ---- TensorView -----------------------------------------------------------------------------

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow when the file was read
  return n;
}

std::string TensorView::shape_str() const { return shape_to_string(shape); }

std::vector<float> TensorView::to_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  to_f32(out.data());
  return out;
}

#if defined(__x86_64__)
// CPUID leaf 1: F16C (ECX bit 29) and AVX (bit 28) with OS-enabled YMM state (OSXSAVE bit 27 +
// XCR0 bits 1-2). By hand because older clang's __builtin_cpu_supports lacks "f16c".
static bool cpu_has_f16c() {
  static const bool has = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    if (!(c & (1u << 27)) || !(c & (1u << 28)) || !(c & (1u << 29))) return false;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6u) == 6u;
  }();
  return has;
}

// Hardware half -> float (exact, like fp16_to_float; a signalling NaN comes out quiet), 8 at a
// time: several times faster than the scalar bit manipulation on multi-GB checkpoints.
__attribute__((target("avx,f16c"))) static void f16_to_f32_f16c(const uint8_t* src, float* dst,
                                                                  size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = fp16_to_float(h);
  }
}
#endif

void TensorView::to_f32(float* out) const {
  MOSAIC_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "tensor '",
               name, "': cannot convert dtype ", dtype_name(dtype), " to float32 (only F32, F16, BF16)");
  const size_t n = size_t(numel());
  if (n == 0) return;  // out may be null for an empty tensor
  // memcpy per element: the data may be unaligned inside the file.
  if (dtype == DType::F32) {
    std::memcpy(out, data, n * 4);
    return;
  }
  // Two loops rather than a function pointer so each conversion inlines (checkpoints are GBs).
  auto convert = [&](auto to_float) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      out[i] = to_float(h);
    }
  };
  if (dtype == DType::F16) {
#if defined(__x86_64__)
    if (cpu_has_f16c()) {
      f16_to_f32_f16c(data, out, n);
      return;
    }
#endif
    convert([](uint16_t h) { return fp16_to_float(h); });
  }
  else convert([](uint16_t h) { return bf16_to_float(h); });
}

// ---- SafetensorsFile ------------------------------------------------------------------------

namespace {
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // 100 MB, the reference implementation's limit
constexpr int kMaxJsonDepth = 64;                 // a valid header nests 3 deep

// Rejects pathologically nested JSON before handing it to the (recursive) DOM builder.
bool json_depth_ok(std::string_view s) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

// A JSON value as a non-negative integer that fits int64, or fail.
int64_t as_index(const json& v, const std::string& where, const char* what) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    MOSAIC_CHECK(u <= uint64_t(std::numeric_limits<int64_t>::max()), where, ": ", what, " value ", u,
                 " is too large");
    return int64_t(u);
  }
  if (v.is_number_integer()) fail(where, ": ", what, " has a negative value ", v.get<int64_t>());
  fail(where, ": ", what, " must hold non-negative integers, got ", v.dump());
}
}  // namespace

void SafetensorsFile::parse_layout(const uint8_t* bytes, size_t size) {
  const std::string file = path_.string();
  MOSAIC_CHECK(size >= 8, file, ": not a safetensors file (", size, " bytes, need at least 8)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian u64
  MOSAIC_CHECK(n <= kMaxHeaderBytes, file, ": header length ", n, " is absurd (limit ",
               kMaxHeaderBytes, "); not a safetensors file?");
  MOSAIC_CHECK(n <= size - 8, file, ": header length ", n, " runs past the end of the file (",
               size, " bytes); file truncated?");
  header_bytes_ = 8 + size_t(n);
  std::string_view text(reinterpret_cast<const char*>(bytes + 8), size_t(n));
  MOSAIC_CHECK(!text.empty() && text[0] == '{', file, ": header is not a JSON object");
  MOSAIC_CHECK(json_depth_ok(text), file, ": header JSON nests deeper than ", kMaxJsonDepth);
  json header = json::parse(text, nullptr, /*allow_exceptions=*/false);
  MOSAIC_CHECK(!header.is_discarded(), file, ": header is not valid JSON");
  MOSAIC_CHECK(header.is_object(), file, ": header is not a JSON object");

  const uint8_t* data = bytes + header_bytes_;
  const uint64_t data_size = size - header_bytes_;
  std::vector<std::pair<uint64_t, const TensorView*>> spans;  // (begin, view) to check overlap
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      MOSAIC_CHECK(entry.is_object() || entry.is_null(), file, ": __metadata__ is not an object");
      if (entry.is_null()) continue;
      for (const auto& [k, v] : entry.items()) {
        MOSAIC_CHECK(v.is_string(), file, ": __metadata__ value for '", k, "' is not a string");
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = file + ": tensor '" + name + "'";
    MOSAIC_CHECK(entry.is_object(), where, ": entry is not a JSON object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      MOSAIC_CHECK(entry.contains(key), where, ": missing '", key, "'");
    const json& jd = entry["dtype"];
    const json& js = entry["shape"];
    const json& jo = entry["data_offsets"];
    MOSAIC_CHECK(jd.is_string(), where, ": dtype is not a string");
    TensorView v;
    v.name = name;
    try {
      v.dtype = dtype_from_name(jd.get<std::string>());
    } catch (const Error& e) {
      fail(where, ": ", e.what());
    }
    MOSAIC_CHECK(js.is_array(), where, ": shape is not an array");
    MOSAIC_CHECK(js.size() <= 64, where, ": shape has ", js.size(), " dimensions");
    for (const json& d : js) v.shape.push_back(as_index(d, where, "shape"));
    MOSAIC_CHECK(jo.is_array() && jo.size() == 2, where, ": data_offsets is not [begin, end]");
    const uint64_t begin = uint64_t(as_index(jo[0], where, "data_offsets"));
    const uint64_t end = uint64_t(as_index(jo[1], where, "data_offsets"));
    MOSAIC_CHECK(begin <= end, where, ": data_offsets [", begin, ", ", end, "] has begin > end");
    MOSAIC_CHECK(end <= data_size, where, ": data_offsets [", begin, ", ", end,
                 "] run past the data section (", data_size, " bytes); file truncated?");
    const uint64_t expect = checked_nbytes(v.shape, v.dtype, where);
    MOSAIC_CHECK(end - begin == expect, where, ": ", end - begin, " bytes in data_offsets but ",
                 dtype_name(v.dtype), " ", v.shape_str(), " needs ", expect);
    v.data = data + begin;
    v.nbytes = size_t(end - begin);
    auto [it, inserted] = tensors_.emplace(name, std::move(v));
    spans.emplace_back(begin, &it->second);
  }
  // Overlap: sorted by begin, each tensor must start at or after the previous one's end.
  // (Empty tensors may sit anywhere, even inside another tensor's bytes: they read nothing.)
  std::sort(spans.begin(), spans.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  uint64_t prev_end = 0;
  const TensorView* prev = nullptr;
  for (const auto& [begin, v] : spans) {
    if (v->nbytes == 0) continue;
    MOSAIC_CHECK(prev == nullptr || begin >= prev_end, file, ": tensor '", v->name,
                 "' overlaps tensor '", prev->name, "' in the data section");
    prev_end = begin + v->nbytes;
    prev = v;
  }
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open ", path.string(), ": ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path.string(), ": not a regular file");
  }
  const size_t size = size_t(st.st_size);
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail("cannot mmap ", path.string(), ": ", std::strerror(e));
    }
    f->map_ = m;
    f->map_size_ = size;
  }
  ::close(fd);  // the mapping stays valid after close
  f->parse_layout(static_cast<const uint8_t*>(f->map_), size);
  return f;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::parse(std::string bytes, const std::string& name) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = name;
  f->owned_ = std::move(bytes);
  f->parse_layout(reinterpret_cast<const uint8_t*>(f->owned_.data()), f->owned_.size());
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

// ---- Checkpoint -----------------------------------------------------------------------------

namespace fs = std::filesystem;

Checkpoint Checkpoint::open(const fs::path& dir_or_file) {
  Checkpoint ck;
  ck.root_ = dir_or_file;
  std::error_code ec;
  MOSAIC_CHECK(fs::exists(dir_or_file, ec), "checkpoint path ", dir_or_file.string(),
               " does not exist");

  auto add_all = [&ck](const std::shared_ptr<SafetensorsFile>& f) {
    ck.files_.push_back(f);
    for (const auto& [name, view] : f->tensors()) {
      auto [it, inserted] = ck.index_.emplace(name, &view);
      MOSAIC_CHECK(inserted, "tensor '", name, "' appears in two files of ", ck.root_.string(),
                   " (again in ", f->path().filename().string(), ")");
    }
  };

  fs::path index_path = dir_or_file;
  bool is_index = false;
  if (fs::is_directory(dir_or_file)) {
    index_path = dir_or_file / "model.safetensors.index.json";
    is_index = fs::exists(index_path);
  } else {
    is_index = dir_or_file.filename().string().ends_with(".index.json");
  }

  if (is_index) {
    const fs::path dir = index_path.parent_path();
    json idx = json::parse(read_file(index_path), nullptr, false);
    MOSAIC_CHECK(!idx.is_discarded() && idx.is_object(), index_path.string(), ": not a JSON object");
    MOSAIC_CHECK(idx.contains("weight_map") && idx["weight_map"].is_object(), index_path.string(),
                 ": missing 'weight_map' object");
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (const auto& [name, shard] : idx["weight_map"].items()) {
      MOSAIC_CHECK(shard.is_string(), index_path.string(), ": weight_map entry for '", name,
                   "' is not a file name");
      const std::string shard_name = shard.get<std::string>();
      // A shard name is a plain file name next to the index, never a path elsewhere.
      MOSAIC_CHECK(!shard_name.empty() && shard_name.find('/') == std::string::npos &&
                       shard_name != "." && shard_name != "..",
                   index_path.string(), ": weight_map entry for '", name, "' has bad file name '",
                   shard_name, "'");
      auto it = shards.find(shard_name);
      if (it == shards.end()) {
        const fs::path p = dir / shard_name;
        MOSAIC_CHECK(fs::exists(p), index_path.string(), ": shard ", shard_name,
                     " (holding tensor '", name, "') is missing");
        it = shards.emplace(shard_name, SafetensorsFile::open(p)).first;
        ck.files_.push_back(it->second);
      }
      const TensorView* v = it->second->find(name);
      MOSAIC_CHECK(v != nullptr, index_path.string(), ": tensor '", name, "' is mapped to ",
                   shard_name, " but that shard does not contain it");
      ck.index_.emplace(name, v);
    }
    // Shards in file-name order (model-00001-of-..., ...), not in order of first mention.
    std::sort(ck.files_.begin(), ck.files_.end(),
              [](const auto& a, const auto& b) { return a->path() < b->path(); });
    ck.root_ = dir;
    return ck;
  }

  if (!fs::is_directory(dir_or_file)) {
    add_all(SafetensorsFile::open(dir_or_file));
    return ck;
  }
  if (fs::exists(dir_or_file / "model.safetensors")) {
    add_all(SafetensorsFile::open(dir_or_file / "model.safetensors"));
    return ck;
  }
  std::vector<fs::path> paths;
  for (const auto& e : fs::directory_iterator(dir_or_file))
    if (e.path().extension() == ".safetensors") paths.push_back(e.path());
  MOSAIC_CHECK(!paths.empty(), "no .safetensors files in ", dir_or_file.string());
  std::sort(paths.begin(), paths.end());
  for (const auto& p : paths) add_all(SafetensorsFile::open(p));
  return ck;
}

bool Checkpoint::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorView& Checkpoint::get(const std::string& name) const {
  auto it = index_.find(name);
  MOSAIC_CHECK(it != index_.end(), "missing tensor '", name, "' in ", root_.string());
  return *it->second;
}

const TensorView& Checkpoint::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView& v = get(name);
  MOSAIC_CHECK(v.shape == shape, "tensor '", name, "' in ", root_.string(), " has shape ",
               v.shape_str(), ", expected ", shape_to_string(shape));
  return v;
}

void SafetensorsFile::release(const TensorView& t) const {
  if (!map_ || t.nbytes == 0) return;
  const auto* base = static_cast<const uint8_t*>(map_);
  if (t.data < base || t.data + t.nbytes > base + map_size_) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = uintptr_t(t.data) & ~(page - 1), e = uintptr_t(t.data + t.nbytes);
  // Read-only private file mapping: MADV_DONTNEED only unmaps; the data is re-read from the file.
  ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

void Checkpoint::release(const std::string& name) const {
  const TensorView& t = get(name);
  for (const auto& f : files_)
    if (f->find(name) == &t) f->release(t);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, v] : index_) out.push_back(name);
  return out;
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, v] : index_) n += v->nbytes;
  return n;
}

// ---- SafetensorsWriter ----------------------------------------------------------------------

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            std::string bytes) {
  MOSAIC_CHECK(name != "__metadata__", "safetensors writer: '__metadata__' is not a tensor name");
  for (const auto& e : entries_)
    MOSAIC_CHECK(e.name != name, "safetensors writer: tensor '", name, "' added twice");
  const std::string where = "safetensors writer: tensor '" + name + "'";
  const uint64_t expect = checked_nbytes(shape, dtype, where);
  MOSAIC_CHECK(bytes.size() == expect, where, ": ", bytes.size(), " bytes given but ",
               dtype_name(dtype), " ", shape_to_string(shape), " needs ", expect);
  entries_.push_back({name, dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::add_f32(const std::string& name, std::vector<int64_t> shape,
                                const float* data) {
  const uint64_t n = checked_nbytes(shape, DType::F32, "safetensors writer: tensor '" + name + "'");
  add(name, DType::F32, std::move(shape), std::string(reinterpret_cast<const char*>(data), n));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

size_t SafetensorsWriter::data_bytes() const {
  size_t n = 0;
  for (const auto& e : entries_) n += e.bytes.size();
  return n;
}

std::vector<const SafetensorsWriter::Entry*> SafetensorsWriter::data_order() const {
  std::vector<const Entry*> order;
  for (const auto& e : entries_) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });
  return order;
}

std::string SafetensorsWriter::header() const {
  // Offsets follow the data order; keys are written "__metadata__" first, then sorted by name,
  // with the entry fields in the reference order (dtype, shape, data_offsets).
  std::map<std::string, std::pair<uint64_t, uint64_t>> offsets;
  uint64_t off = 0;
  for (const Entry* e : data_order()) {
    offsets[e->name] = {off, off + e->bytes.size()};
    off += e->bytes.size();
  }
  ordered_json h = ordered_json::object();
  if (!metadata_.empty()) {
    ordered_json m = ordered_json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
    h["__metadata__"] = std::move(m);
  }
  std::vector<const Entry*> by_name;
  for (const auto& e : entries_) by_name.push_back(&e);
  std::sort(by_name.begin(), by_name.end(),
            [](const Entry* a, const Entry* b) { return a->name < b->name; });
  for (const Entry* e : by_name) {
    ordered_json t = ordered_json::object();
    t["dtype"] = std::string(dtype_name(e->dtype));
    t["shape"] = e->shape;
    t["data_offsets"] = {offsets[e->name].first, offsets[e->name].second};
    h[e->name] = std::move(t);
  }
  std::string s = h.dump();
  s.append((8 - s.size() % 8) % 8, ' ');  // pad so the data section starts 8-byte aligned
  return s;
}

std::string SafetensorsWriter::serialize() const {
  std::string h = header();
  std::string out;
  out.reserve(8 + h.size() + data_bytes());
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  out += h;
  for (const Entry* e : data_order()) out += e->bytes;
  return out;
}

void SafetensorsWriter::write(const fs::path& path) const {
  // Streams the pieces instead of building serialize()'s copy: a shard can be gigabytes.
  const std::string h = header();
  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create ", tmp.string(), ": ", std::strerror(errno));
  auto put = [&](const char* p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        ::close(fd);
        fs::remove(tmp);
        fail("cannot write ", tmp.string(), ": ", std::strerror(e));
      }
      p += w;
      n -= size_t(w);
    }
  };
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = char((uint64_t(h.size()) >> (8 * i)) & 0xff);
  put(len, 8);
  put(h.data(), h.size());
  for (const Entry* e : data_order()) put(e->bytes.data(), e->bytes.size());
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    fs::remove(tmp);
    fail("cannot write ", tmp.string(), ": ", std::strerror(e));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp);
    fail("cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message());
  }
}

// ---- ShardedWriter --------------------------------------------------------------------------

ShardedWriter::ShardedWriter(fs::path dir, size_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  MOSAIC_CHECK(max_shard_bytes_ > 0, "sharded writer: max_shard_bytes must be positive");
  MOSAIC_CHECK(fs::is_directory(dir_), "sharded writer: ", dir_.string(), " is not a directory");
}

ShardedWriter::~ShardedWriter() {
  if (finished_) return;
  std::error_code ec;
  for (const auto& p : temp_shards_) fs::remove(p, ec);
}

void ShardedWriter::set_metadata(const std::string& key, const std::string& value) {
  MOSAIC_CHECK(seen_.empty(), "sharded writer: set metadata before adding tensors");
  metadata_[key] = value;
  current_.set_metadata(key, value);
}

void ShardedWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                        std::string bytes) {
  MOSAIC_CHECK(!finished_, "sharded writer: add after finish");
  MOSAIC_CHECK(seen_.emplace(name, true).second, "sharded writer: tensor '", name, "' added twice");
  if (current_.size() > 0 && current_.data_bytes() + bytes.size() > max_shard_bytes_) flush();
  total_bytes_ += bytes.size();
  if (shard_names_.size() <= temp_shards_.size()) shard_names_.emplace_back();
  shard_names_.back().push_back(name);
  current_.add(name, dtype, std::move(shape), std::move(bytes));
}

void ShardedWriter::add_f32(const std::string& name, std::vector<int64_t> shape, const float* data) {
  const uint64_t n = checked_nbytes(shape, DType::F32, "sharded writer: tensor '" + name + "'");
  add(name, DType::F32, std::move(shape), std::string(reinterpret_cast<const char*>(data), n));
}

void ShardedWriter::flush() {
  if (current_.size() == 0) return;
  fs::path tmp = dir_ / (".shard-" + std::to_string(temp_shards_.size() + 1) + ".safetensors.tmp-" +
                         std::to_string(::getpid()));
  temp_shards_.push_back(tmp);  // recorded first so the destructor cleans it on failure
  current_.write(tmp);
  current_ = SafetensorsWriter();
  for (const auto& [k, v] : metadata_) current_.set_metadata(k, v);
}

namespace {
void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  MOSAIC_CHECK(!ec, "cannot rename ", from.string(), " to ", to.string(), ": ", ec.message());
}
}  // namespace

std::vector<fs::path> ShardedWriter::finish() {
  MOSAIC_CHECK(!finished_, "sharded writer: finish called twice");
  if (current_.size() > 0 || temp_shards_.empty()) {
    if (shard_names_.size() <= temp_shards_.size()) shard_names_.emplace_back();
    flush();
    if (temp_shards_.empty()) {  // no tensors at all: still a valid (empty) checkpoint
      temp_shards_.push_back(dir_ / (".shard-1.safetensors.tmp-" + std::to_string(::getpid())));
      current_.write(temp_shards_.back());
    }
  }
  std::vector<fs::path> out;
  const size_t n = temp_shards_.size();
  if (n == 1) {
    rename_or_fail(temp_shards_[0], dir_ / "model.safetensors");
    out.push_back(dir_ / "model.safetensors");
    finished_ = true;
    return out;
  }
  ordered_json weight_map = ordered_json::object();
  std::map<std::string, std::string> sorted;  // index keys sorted, as transformers writes them
  for (size_t i = 0; i < n; ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    rename_or_fail(temp_shards_[i], dir_ / buf);
    out.push_back(dir_ / buf);
    for (const auto& name : shard_names_[i]) sorted[name] = buf;
  }
  for (const auto& [k, v] : sorted) weight_map[k] = v;
  ordered_json index = ordered_json::object();
  index["metadata"] = {{"total_size", total_bytes_}};
  index["weight_map"] = std::move(weight_map);
  // The index goes last: a directory with an index is a complete checkpoint.
  write_file_atomic(dir_ / "model.safetensors.index.json", index.dump(2) + "\n");
  out.push_back(dir_ / "model.safetensors.index.json");
  finished_ = true;
  return out;
}

}  // namespace mosaic
