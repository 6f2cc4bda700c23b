// The thread pool of Week 2, day 5, given from Week 4 on: the kernels of Weeks 4 and 5 cut
// their work into numbered tasks, and run_tasks hands them out.
//
//   run_tasks(n_tasks, threads, make_state, work):
//     thread 0 (the caller)   thread 1          ...   thread threads-1
//     state = make_state()    state = ...             state = ...
//     work(state, 0)          work(state, 1)          ...              <- each takes the next
//     work(state, 3)          work(state, 2)          ...                 task from a shared
//     ...                                                                 counter when it is done
//
// A thread keeps its state from one task to the next (a softmax state, a workspace), so that
// nothing is allocated per task. run_tasks returns when every task is done.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace tiny_attn {

// The cores of this machine (at least 1).
inline int cpu_cores() {
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// The threads a kernel runs on: num_threads when positive, else one a core; never more than
// there are tasks, and at least 1.
inline int task_threads(int num_threads, int64_t n_tasks) {
  const int64_t asked = num_threads > 0 ? num_threads : cpu_cores();
  return static_cast<int>(std::max<int64_t>(1, std::min(asked, n_tasks)));
}

// work(state, task) for every task in 0 .. n_tasks - 1, on `threads` threads (the calling
// thread one of them), each with its own state = make_state().
template <class MakeState, class Work>
void run_tasks(int64_t n_tasks, int threads, MakeState make_state, Work work) {
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    auto state = make_state();
    for (int64_t task; (task = next.fetch_add(1)) < n_tasks;) {
      work(state, task);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back(worker);
  }
  worker();
  for (auto& t : pool) {
    t.join();
  }
}

} // namespace tiny_attn
