// Progress reporting for long work (perplexity windows, quantizing layers, loading shards).
// Writes to stderr, at most a few times a second: a rewriting line on a terminal, plain lines
// (about every 10%) otherwise, so logs stay readable. Silent when quiet is set.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace mosaic {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool quiet = false);
  ~Progress();
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");
  double elapsed_s() const;

 private:
  std::string label_;
  int64_t total_;
  bool quiet_, tty_, finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_print_;
};

// Peak resident set size of this process in bytes (getrusage).
int64_t peak_rss_bytes();
// "1.23 GiB" style.
std::string format_bytes(int64_t bytes);

}  // namespace mosaic
