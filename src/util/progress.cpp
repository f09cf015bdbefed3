#include "util/progress.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace mosaic {

Progress::Progress(std::string label, int64_t total, bool quiet)
    : label_(std::move(label)), total_(total), quiet_(quiet), tty_(isatty(fileno(stderr))) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (!finished_ && tty_ && !quiet_) std::fputc('\n', stderr);
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& extra) {
  if (quiet_) return;
  auto now = std::chrono::steady_clock::now();
  double el = elapsed_s();
  double frac = total_ > 0 ? double(done) / double(total_) : 0.0;
  double eta = done > 0 ? el * (1.0 / frac - 1.0) : 0.0;
  if (tty_) {
    if (std::chrono::duration<double>(now - last_print_).count() < 0.2 && done < total_) return;
    std::fprintf(stderr, "\r[%s] %lld/%lld (%.0f%%) %.1fs elapsed, eta %.1fs %s\033[K", label_.c_str(),
                 (long long)done, (long long)total_, 100.0 * frac, el, eta, extra.c_str());
  } else {
    int decile = int(frac * 10.0);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "[%s] %lld/%lld (%.0f%%) %.1fs elapsed, eta %.1fs %s\n", label_.c_str(),
                 (long long)done, (long long)total_, 100.0 * frac, el, eta, extra.c_str());
  }
  std::fflush(stderr);
  last_print_ = now;
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (quiet_) return;
  std::fprintf(stderr, "%s[%s] done in %.1fs %s\n", tty_ ? "\r" : "", label_.c_str(), elapsed_s(),
               extra.c_str());
  if (tty_) std::fprintf(stderr, "\033[K");
}

int64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

std::string format_bytes(int64_t b) {
  char buf[64];
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(b);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

}  // namespace mosaic
