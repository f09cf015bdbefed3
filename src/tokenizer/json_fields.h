// Typed access to tokenizer.json fields with errors that name the file and the JSON path
// ("malformed tokenizer.json x/tokenizer.json: model.merges[3] must be ..."), so a bad file is
// reported in one line instead of surfacing as an nlohmann exception or a crash.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "util/error.h"

namespace mosaic::tok {

using json = nlohmann::json;

// Where we are in the file, for messages.
struct Where {
  const std::string& source;
  std::string path;

  Where operator/(const std::string& key) const { return {source, path.empty() ? key : path + "." + key}; }
  Where operator[](size_t i) const { return {source, path + "[" + std::to_string(i) + "]"}; }

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    mosaic::fail("malformed tokenizer.json ", source, ": ", path.empty() ? "top level" : path, " ",
                 std::forward<Args>(args)...);
  }
};

inline const char* type_name(const json& v) { return v.type_name(); }

inline const json& require_object(const json& v, const Where& w) {
  if (!v.is_object()) w.fail("must be an object, got ", type_name(v));
  return v;
}

// Member `key` of object v; fails when missing.
inline const json& member(const json& v, const char* key, const Where& w) {
  require_object(v, w);
  auto it = v.find(key);
  if (it == v.end()) (w / key).fail("is missing");
  return *it;
}

// Member `key`, or nullptr when absent or null.
inline const json* optional_member(const json& v, const char* key, const Where& w) {
  require_object(v, w);
  auto it = v.find(key);
  if (it == v.end() || it->is_null()) return nullptr;
  return &*it;
}

inline std::string get_string(const json& v, const char* key, const Where& w) {
  const json& f = member(v, key, w);
  if (!f.is_string()) (w / key).fail("must be a string, got ", type_name(f));
  return f.get<std::string>();
}

inline std::optional<std::string> get_optional_string(const json& v, const char* key, const Where& w) {
  const json* f = optional_member(v, key, w);
  if (f == nullptr) return std::nullopt;
  if (!f->is_string()) (w / key).fail("must be a string or null, got ", type_name(*f));
  return f->get<std::string>();
}

inline bool get_bool(const json& v, const char* key, const Where& w, bool fallback) {
  const json* f = optional_member(v, key, w);
  if (f == nullptr) return fallback;
  if (!f->is_boolean()) (w / key).fail("must be a boolean, got ", type_name(*f));
  return f->get<bool>();
}

// A token id: an integer in [0, 2^31).
inline int32_t as_id(const json& v, const Where& w) {
  if (!v.is_number_integer()) w.fail("must be an integer id, got ", type_name(v));
  if (v.is_number_unsigned() ? v.get<uint64_t>() > 0x7FFFFFFFull
                             : (v.get<int64_t>() < 0 || v.get<int64_t>() > 0x7FFFFFFF))
    w.fail("id ", v.dump(), " is out of range [0, 2^31)");
  return static_cast<int32_t>(v.get<int64_t>());
}

}  // namespace mosaic::tok
