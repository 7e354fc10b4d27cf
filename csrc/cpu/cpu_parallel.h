// at::parallel_for over independent tasks of roughly equal size.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace epic {
namespace cpu {

// Runs f(task) for task in [0, tasks); work_per_task (entries) sets the grain so that tiny
// problems stay on the calling thread instead of paying for a parallel region.
inline int64_t task_grain(int64_t work_per_task) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_task));
}

template <typename F>
void for_each_task(int64_t tasks, int64_t work_per_task, const F& f) {
  at::parallel_for(0, tasks, task_grain(work_per_task), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) f(task);
  });
}

// Same, but f(task, follows) also learns whether the same thread ran task - 1 just before
// (follows = task > begin of its range), e.g. to pass a bound from one task to the next.
template <typename F>
void for_each_task_in_order(int64_t tasks, int64_t work_per_task, const F& f) {
  at::parallel_for(0, tasks, task_grain(work_per_task), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) f(task, task > begin);
  });
}

}  // namespace cpu
}  // namespace epic
