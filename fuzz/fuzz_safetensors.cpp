// libFuzzer target: arbitrary bytes as a .safetensors file. The parser must either accept the
// input, with every tensor view inside the buffer and consistent with its dtype and shape, or
// throw mosaic::Error; anything else (crash, sanitizer report, other exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "io/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    auto f = mosaic::SafetensorsFile::parse(std::move(bytes), "fuzz.safetensors");
    for (const auto& [name, v] : f->tensors()) {
      // Accepted views must be self-consistent: touch every byte (ASan checks the bounds)
      // and convert the float ones.
      if (v.nbytes != size_t(v.numel()) * mosaic::dtype_size(v.dtype)) std::abort();
      volatile uint8_t sink = 0;
      for (size_t i = 0; i < v.nbytes; ++i) sink = sink ^ v.data[i];
      if (v.dtype == mosaic::DType::F32 || v.dtype == mosaic::DType::F16 ||
          v.dtype == mosaic::DType::BF16) {
        if (v.nbytes <= (1u << 20)) (void)v.to_f32();
      }
      (void)v.shape_str();
    }
  } catch (const mosaic::Error&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
