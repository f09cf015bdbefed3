#include "model/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "util/env.h"

#include <cblas.h>

namespace mosaic {
namespace {

// Set while a thread runs part of a parallel_for job: a nested parallel_for (an op called from
// inside another op's worker) then runs inline instead of waiting on the busy pool.
thread_local bool t_inside_job = false;
struct InsideJob {
  bool prev = t_inside_job;
  InsideJob() { t_inside_job = true; }
  ~InsideJob() { t_inside_job = prev; }
};

// Workers sleep on a condition variable between jobs; each job has a generation number so a
// worker runs every job exactly once. The calling thread takes part as worker 0.
class Pool {
 public:
  explicit Pool(int n) : n_(std::max(1, n)) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> one_job(run_mu_);  // callers on different threads take turns
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_items_ = n;
      pending_ = n_ - 1;
      ++generation_;
    }
    cv_.notify_all();
    run_part(0);
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void run_part(int part) {
    InsideJob guard;
    int64_t chunk = (n_items_ + n_ - 1) / n_;
    int64_t b = std::min<int64_t>(n_items_, part * chunk), e = std::min<int64_t>(n_items_, b + chunk);
    if (b < e) (*fn_)(b, e);
  }
  void loop(int part) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      run_part(part);
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  int n_;
  std::mutex run_mu_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_items_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

int default_threads() {
  return env_int("MOSAIC_THREADS", int(std::max(1u, std::thread::hardware_concurrency())), 1, 4096);
}

std::mutex g_pool_mu;
std::unique_ptr<Pool>& pool_slot() {
  static std::unique_ptr<Pool> p;
  return p;
}

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  auto& p = pool_slot();
  if (!p) {
    p = std::make_unique<Pool>(default_threads());
    openblas_set_num_threads(1);
  }
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  pool_slot() = std::make_unique<Pool>(std::max(1, n));
  openblas_set_num_threads(1);
}

void parallel_for(int64_t n, int64_t cost_per_item, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  // ~64k flops per call is roughly where a wake-up (a few microseconds) stops dominating.
  constexpr int64_t kMinWork = 1 << 16;
  Pool& p = pool();
  if (t_inside_job || p.size() == 1 || n == 1 || n * std::max<int64_t>(1, cost_per_item) < kMinWork) {
    fn(0, n);
    return;
  }
  p.run(n, fn);
}

}  // namespace mosaic

namespace mosaic {

void parallel_for_each(int64_t n, int64_t cost_per_item, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int nt = num_threads();
  if (nt == 1 || n == 1 || t_inside_job) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  // One range per thread; each thread then pulls indices until none are left.
  parallel_for(nt, std::max<int64_t>(1, cost_per_item) * ((n + nt - 1) / nt), [&](int64_t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i);
  });
}

}  // namespace mosaic
