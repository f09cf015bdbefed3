// Environment switches of the same-binary comparisons (MOSAIC_PDL, MOSAIC_NORM_V, ...). Plain C++.
#pragma once
#include <cstdlib>

namespace mosaic {

// On unless the variable is set to a value starting with '0' (the form every comparison switch documents as
// NAME=0). Reads the environment on each call: a caller that is on a hot path caches it.
inline bool env_switch_on(const char* name) {
  const char* e = std::getenv(name);
  return !(e && *e == '0');
}

}  // namespace mosaic
