// Runs the built `mosaic` binary with arguments through the shell and captures what it prints:
// the CLI tests check exit codes and messages end to end.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace mosaic::test {

struct CliResult {
  int code = -1;
  std::string out;  // stdout + stderr
};

inline CliResult run_mosaic(const std::string& args) {
  const std::string cmd = std::string(MOSAIC_BINARY_DIR) + "/mosaic " + args + " 2>&1";
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace mosaic::test
