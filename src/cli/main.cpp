// mosaic: the command-line front end. A thin layer: parse options, call the library, print.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "cli/huge_pages.h"
#include "util/error.h"

int main(int argc, char** argv) {
  mosaic::cli::reexec_with_huge_pages(argv);  // first thing: nothing is allocated or printed yet
  CLI::App app{
      "mosaic: 4-bit quantization of LLaMA-3 / Qwen3 models (MosaicQuant) and fast inference "
      "(ZipperEngine).\nRun 'mosaic <command> --help' for the options of each command."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mosaic 0.1.0");
  mosaic::cli::add_tokenize_command(app);
  mosaic::cli::add_inspect_command(app);
  mosaic::cli::add_generate_command(app);
  mosaic::cli::add_ppl_command(app);
  mosaic::cli::add_bench_command(app);
  mosaic::cli::add_quantize_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mosaic::Error& e) {
    std::fprintf(stderr, "mosaic: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mosaic: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mosaic: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
