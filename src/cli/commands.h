// Each subcommand lives in its own cmd_<name>.cpp and registers itself on the root app.
// Commands throw mosaic::Error for user errors; main() prints it on one line and exits 1.
#pragma once
#include <CLI/CLI.hpp>

namespace mosaic::cli {

void add_tokenize_command(CLI::App& app);  // cmd_tokenize.cpp
void add_inspect_command(CLI::App& app);   // cmd_inspect.cpp
void add_generate_command(CLI::App& app);  // cmd_generate.cpp
void add_ppl_command(CLI::App& app);       // cmd_ppl.cpp
void add_bench_command(CLI::App& app);     // cmd_bench.cpp
void add_quantize_command(CLI::App& app);  // cmd_quantize.cpp

}  // namespace mosaic::cli
