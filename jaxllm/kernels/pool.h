// parallel_for on XLA's intra-op thread pool, shared by the kernels in this directory.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace jaxllm {

// Runs task(0..n-1) on the caller and the pool; returns when all are done. Late pool workers find no
// work left and only touch the shared state, so the call never waits for a busy pool thread to start.
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, int n, F task) {
  struct Shared { std::atomic<int> next{0}, done{0}; };
  auto shared = std::make_shared<Shared>();
  // Holds `task` by reference: it is only called for indices claimed before `done` reaches n.
  auto work = [shared, n, &task]() {
    for (int i; (i = shared->next.fetch_add(1)) < n;) {
      task(i);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int helpers = int(std::min<int64_t>(pool.num_threads(), n)) - 1;
  for (int h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  while (shared->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace jaxllm
