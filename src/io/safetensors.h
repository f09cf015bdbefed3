// safetensors: reading (mmap, zero copy; single file or sharded with model.safetensors.index.json)
// and writing (atomic). Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section; offsets are relative to the data section.
// Every malformed input (header length past the file, bad JSON, offsets out of range or
// overlapping, dtype/shape not matching the byte count) throws mosaic::Error naming file+tensor.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mosaic {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, U16, U32, U64, F8_E4M3 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);   // "BF16"
DType dtype_from_name(std::string_view name);  // throws on unknown

// A tensor inside a mapped file: no copy, valid while its file object lives.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  std::string shape_str() const;  // "[576, 1536]"
  // Converts F32/F16/BF16 to float32 (throws for other dtypes).
  std::vector<float> to_f32() const;
  void to_f32(float* out) const;  // out has numel() floats
};

// One .safetensors file, memory-mapped read-only.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* find(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory (or a single .safetensors file): reads
// model.safetensors.index.json when present (weight_map: name -> shard), else model.safetensors,
// else every *.safetensors in the directory.
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir_or_file);
  bool has(const std::string& name) const;
  // Throws "missing tensor 'X' in <dir>" when absent.
  const TensorView& get(const std::string& name) const;
  // get() plus a shape check: throws naming expected and actual shapes.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;
  const std::filesystem::path& root() const { return root_; }
  size_t total_bytes() const;

 private:
  std::filesystem::path root_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// Builds a safetensors file in memory order of add() calls and writes it atomically.
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::string bytes);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
  void set_metadata(const std::string& key, const std::string& value);
  size_t size() const { return entries_.size(); }
  // Header keys sorted, data 8-byte aligned; written to a temp file then renamed over path.
  void write(const std::filesystem::path& path) const;
  std::string serialize() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mosaic
