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
// The data pointer is only as aligned as the file makes it (files we write align every tensor
// to its element size; foreign files may not): read through memcpy or to_f32.
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
  // Parses a whole safetensors file held in memory (the bytes are moved in and owned); `name`
  // stands in for the path in error messages. Same validation as open(); used by tests and fuzz.
  static std::shared_ptr<SafetensorsFile> parse(std::string bytes, const std::string& name = "<memory>");
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* find(const std::string& name) const;
  size_t header_bytes() const { return header_bytes_; }  // 8 + JSON length
  // Drops this process's mapping of the pages under `t` (they stay in the page cache and are read
  // again on the next access). For mapped files only; a no-op for parse()d ones. Used by the
  // layer-by-layer quantizer, whose resident set would otherwise grow by every layer it has read.
  void release(const TensorView& t) const;

 private:
  SafetensorsFile() = default;
  void parse_layout(const uint8_t* bytes, size_t size);
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::string owned_;  // backing bytes for parse(); empty for mapped files
  size_t header_bytes_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory (or a single .safetensors file): reads
// model.safetensors.index.json when present (weight_map: name -> shard), else model.safetensors,
// else every *.safetensors in the directory (a name found in two files is an error).
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir_or_file);
  bool has(const std::string& name) const;
  // Throws "missing tensor 'X' in <dir>" when absent.
  const TensorView& get(const std::string& name) const;
  // get() plus a shape check: throws naming expected and actual shapes.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;  // sorted
  // SafetensorsFile::release for the file holding `name` (throws if absent).
  void release(const std::string& name) const;
  const std::filesystem::path& root() const { return root_; }
  size_t total_bytes() const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path root_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// Builds a safetensors file in memory and writes it atomically. The data section holds the
// tensors grouped by element size, largest first, in add() order within a group, with no gaps
// (the reference implementation rejects gaps): every tensor then starts at a multiple of its
// element size, and the header is space-padded so the data section starts 8-byte aligned.
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::string bytes);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
  void set_metadata(const std::string& key, const std::string& value);
  size_t size() const { return entries_.size(); }
  size_t data_bytes() const;  // sum of tensor bytes added so far
  // Header: "__metadata__" first, then tensor keys sorted; written to a temp file then renamed.
  void write(const std::filesystem::path& path) const;
  std::string serialize() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::string header() const;             // padded JSON header (without the 8-byte length)
  std::vector<const Entry*> data_order() const;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes a checkpoint split into shards of at most max_shard_bytes of tensor data (a single
// larger tensor gets a shard of its own), streaming: each full shard goes to a temp file as soon
// as it is complete, so memory holds one shard at a time. finish() renames the shards to
// model-0000i-of-0000N.safetensors and writes model.safetensors.index.json last (or, when one
// shard suffices, just model.safetensors, as Hugging Face does). Until finish() the directory
// holds only temp files, which the destructor removes if finish() never ran.
class ShardedWriter {
 public:
  explicit ShardedWriter(std::filesystem::path dir, size_t max_shard_bytes = size_t(5) << 30);
  ~ShardedWriter();
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;
  // Metadata is written into every shard; set it before the first add().
  void set_metadata(const std::string& key, const std::string& value);
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::string bytes);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
  // Returns the files written (shards, then the index if any).
  std::vector<std::filesystem::path> finish();

 private:
  void flush();
  std::filesystem::path dir_;
  size_t max_shard_bytes_;
  SafetensorsWriter current_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::filesystem::path> temp_shards_;
  std::vector<std::vector<std::string>> shard_names_;  // tensor names per shard
  std::map<std::string, bool> seen_;
  size_t total_bytes_ = 0;
  bool finished_ = false;
};

}  // namespace mosaic
