// placeholder until the inspect command lands
#include "cli/commands.h"
#include "util/error.h"

namespace mosaic::cli {
void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "(not built yet)");
  cmd->callback([] { fail("'inspect' is not built yet"); });
}
}  // namespace mosaic::cli
