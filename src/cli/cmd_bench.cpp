// placeholder until the bench command lands
#include "cli/commands.h"
#include "util/error.h"

namespace mosaic::cli {
void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "(not built yet)");
  cmd->callback([] { fail("'bench' is not built yet"); });
}
}  // namespace mosaic::cli
