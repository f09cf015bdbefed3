// Atomic outputs: write to "<path>.tmp-<pid>" and rename over <path> only when complete, so an
// interrupted run never leaves a half-written file that looks finished. For directories the same
// idea applies one level up (see io/ writers): build "<dir>.partial", rename at the end.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace mosaic {

// Writes bytes to path atomically (temp file + fsync + rename). Throws mosaic::Error.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);
// Reads a whole file; throws mosaic::Error naming the path when it cannot.
std::string read_file(const std::filesystem::path& path);

}  // namespace mosaic
