// Constants shared by the W4A8 FP8 layout (host, C++20) and its kernel (nvcc, C++17): tile sizes
// and the nibble -> e4m3 byte tables of the device conversion (w4a8_fp8_layout.h).
#pragma once
#include <cstdint>

namespace mosaic::cuda {

inline constexpr int kFp8TileN = 128;  // outputs per CTA tile (2 consumer warpgroups x 64)
inline constexpr int kFp8TileK = 128;  // inputs per k-tile (pipeline stage): 4 k32 steps
inline constexpr uint32_t kE4m3PosLo = 0x44403800u;  // e4m3 of 3, 2, 1, 0   (byte i = value i)
inline constexpr uint32_t kE4m3PosHi = 0x4E4C4A48u;  // 7, 6, 5, 4
inline constexpr uint32_t kE4m3NegLo = 0xCACCCED0u;  // -5, -6, -7, -8       (byte i = value i - 8)
inline constexpr uint32_t kE4m3NegHi = 0xB8C0C4C8u;  // -1, -2, -3, -4

}  // namespace mosaic::cuda
