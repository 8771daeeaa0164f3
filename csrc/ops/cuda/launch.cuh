// Launch helpers shared by the CUDA kernels: block size, grid size and the grid-stride loop.
#pragma once

#include <algorithm>
#include <cstdint>

namespace ctnode {
namespace ops {

constexpr int kThreadsPerBlock = 256;

// Enough blocks to cover `count` items once, capped; kernels loop grid-stride.
inline unsigned int blocks_for(int64_t count) {
  const int64_t blocks = (count + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 1 << 16)));
}

#define CTNODE_CUDA_LOOP(i, count)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;       \
       i < (count);                                                                   \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace ops
}  // namespace ctnode
