// Environment variables of the same-binary comparisons and tuning knobs (MOSAIC_PDL, MOSAIC_ZIPPER_*,
// MOSAIC_DECODE_*, ...). One reading of each kind, so that a knob set to a value it cannot take is an
// error naming the variable and what it takes, never silently the default. Plain C++.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>

#include "util/error.h"

namespace mosaic {

// On unless the variable is set to a value starting with '0' (the form every comparison switch documents as
// NAME=0). Reads the environment on each call: a caller that is on a hot path caches it.
inline bool env_switch_on(const char* name) {
  const char* e = std::getenv(name);
  return !(e && *e == '0');
}

// The variable as a number in [lo, hi], or nullopt when it is unset or empty. Anything else (not a
// number, trailing characters, out of range) throws mosaic::Error naming the variable and the range.
inline std::optional<double> env_number(const char* name, double lo, double hi) {
  const char* e = std::getenv(name);
  if (!e || !*e) return std::nullopt;
  char* end = nullptr;
  const double x = std::strtod(e, &end);
  if (end == e || *end != 0 || !(x >= lo && x <= hi))
    fail("environment variable ", name, "='", e, "' must be a number in [", lo, ", ", hi, "]");
  return x;
}
inline double env_number(const char* name, double dflt, double lo, double hi) {
  return env_number(name, lo, hi).value_or(dflt);
}

// The same for integers: an integer in [lo, hi] (no fraction), else dflt when unset or empty.
inline int env_int(const char* name, int dflt, int lo, int hi) {
  const std::optional<double> x = env_number(name, lo, hi);
  if (!x) return dflt;
  if (*x != double(int(*x))) fail("environment variable ", name, "='", std::getenv(name), "' must be an integer in [", lo, ", ", hi, "]");
  return int(*x);
}

// The same for a knob that takes a few values (warps 8 | 16, a cluster of 1, 2, 4 or 8, ...): one of
// `allowed`, else dflt when unset or empty; any other value throws naming the variable and the values.
inline int env_choice(const char* name, int dflt, std::initializer_list<int> allowed) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (end == e || *end != 0 || std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (int a : allowed) list += (list.empty() ? "" : ", ") + std::to_string(a);
    fail("environment variable ", name, "='", e, "' must be one of ", list);
  }
  return int(v);
}

}  // namespace mosaic
