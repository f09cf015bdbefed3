// placeholder until the ppl command lands
#include "cli/commands.h"
#include "util/error.h"

namespace mosaic::cli {
void add_ppl_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("ppl", "(not built yet)");
  cmd->callback([] { fail("'ppl' is not built yet"); });
}
}  // namespace mosaic::cli
