// placeholder until the generate command lands
#include "cli/commands.h"
#include "util/error.h"

namespace mosaic::cli {
void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "(not built yet)");
  cmd->callback([] { fail("'generate' is not built yet"); });
}
}  // namespace mosaic::cli
