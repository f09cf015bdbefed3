// placeholder until the tokenize command lands
#include "cli/commands.h"
#include "util/error.h"

namespace mosaic::cli {
void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(not built yet)");
  cmd->callback([] { fail("'tokenize' is not built yet"); });
}
}  // namespace mosaic::cli
