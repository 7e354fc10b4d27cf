// at::parallel_for over independent tasks of roughly equal size.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace epic {
namespace cpu {

// Runs f(task) for task in [0, tasks); work_per_task (entries) sets the grain so that tiny
// problems stay on the calling thread instead of paying for a parallel region.
template <typename F>
void for_each_task(int64_t tasks, int64_t work_per_task, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) f(task);
  });
}

}  // namespace cpu
}  // namespace epic
