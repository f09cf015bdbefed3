// A `mosaic` with only the bench subcommand, built by scripts/gpu-check.sh on the GPU machine,
// whose image has nvcc but not the Debian libraries (PCRE2, utf8proc, OpenBLAS) that the full
// CLI links. Same command line as the full build: `mosaic bench gemm ...`.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"mosaic (bench-only build for the GPU machine)"};
  app.require_subcommand(1);
  mosaic::cli::add_bench_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mosaic: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
