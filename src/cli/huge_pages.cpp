#include "cli/huge_pages.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "util/env.h"

#if defined(__linux__)
#include <unistd.h>
#endif

namespace mosaic::cli {

void reexec_with_huge_pages(char** argv) {
#if defined(__linux__)
  if (!env_switch_on("MOSAIC_HUGEPAGES")) return;
  const char* cur = std::getenv("GLIBC_TUNABLES");
  const std::string before = cur ? cur : "";
  if (before.find("glibc.malloc.hugetlb") != std::string::npos) return;  // already set: no loop
  std::string thp;
  std::getline(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"), thp);
  if (thp.empty() || thp.find("[never]") != std::string::npos) return;  // madvise would do nothing
  const std::string after = before.empty() ? "glibc.malloc.hugetlb=1" : before + ":glibc.malloc.hugetlb=1";
  setenv("GLIBC_TUNABLES", after.c_str(), 1);
  execv("/proc/self/exe", argv);
  // Only reached when exec failed: carry on in this process as it is.
  if (cur) setenv("GLIBC_TUNABLES", before.c_str(), 1);
  else unsetenv("GLIBC_TUNABLES");
#else
  (void)argv;
#endif
}

}  // namespace mosaic::cli
