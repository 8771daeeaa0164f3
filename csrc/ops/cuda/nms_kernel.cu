// CUDA kernel of ctnode::nms: a 64-bit suppression mask per box pair block, reduced greedily on the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../nms.h"

namespace ctnode {
namespace ops {

namespace {

constexpr int kBoxesPerBlock = 64;

// mask[i, b] bit t: sorted box i suppresses sorted box b * 64 + t (only later boxes).
template <typename scalar_t>
__global__ void suppression_mask_kernel(
    int64_t count, double threshold, const scalar_t* boxes, unsigned long long* mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  const int64_t col_blocks = (count + kBoxesPerBlock - 1) / kBoxesPerBlock;
  const int64_t rows_left = count - row_block * kBoxesPerBlock;
  const int64_t cols_left = count - col_block * kBoxesPerBlock;
  const int64_t rows = rows_left < kBoxesPerBlock ? rows_left : kBoxesPerBlock;
  const int64_t cols = cols_left < kBoxesPerBlock ? cols_left : kBoxesPerBlock;
  if (rows <= 0 || cols <= 0) {
    return;
  }
  __shared__ scalar_t block_boxes[kBoxesPerBlock * 4];
  if (threadIdx.x < cols) {
    for (int d = 0; d < 4; ++d) {
      block_boxes[threadIdx.x * 4 + d] = boxes[(col_block * kBoxesPerBlock + threadIdx.x) * 4 + d];
    }
  }
  __syncthreads();
  if (threadIdx.x >= rows) {
    return;
  }
  const int64_t i = row_block * kBoxesPerBlock + threadIdx.x;
  const scalar_t* box = boxes + i * 4;
  unsigned long long bits = 0;
  for (int64_t t = 0; t < cols; ++t) {
    if (col_block * kBoxesPerBlock + t > i && box_iou(box, block_boxes + t * 4) > threshold) {
      bits |= 1ULL << t;
    }
  }
  mask[i * col_blocks + col_block] = bits;
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms(boxes, scores);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t count = boxes.size(0);
  if (count == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = boxes.index_select(0, order).contiguous();
  const int64_t col_blocks = (count + kBoxesPerBlock - 1) / kBoxesPerBlock;
  at::Tensor mask = at::empty({count * col_blocks}, boxes.options().dtype(at::kLong));
  const dim3 grid(col_blocks, col_blocks);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cuda", [&] {
    auto* bits = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
    const auto stream = at::cuda::getCurrentCUDAStream();
    suppression_mask_kernel<scalar_t><<<grid, kBoxesPerBlock, 0, stream>>>(count, iou_threshold, sorted.data_ptr<scalar_t>(), bits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor host_mask = mask.cpu();
  const auto* rows = reinterpret_cast<const unsigned long long*>(host_mask.data_ptr<int64_t>());
  std::vector<unsigned long long> removed(col_blocks, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < count; ++i) {
    if (removed[i / kBoxesPerBlock] & (1ULL << (i % kBoxesPerBlock))) {
      continue;
    }
    keep.push_back(i);
    for (int64_t b = 0; b < col_blocks; ++b) {
      removed[b] |= rows[i * col_blocks + b];
    }
  }
  const at::Tensor kept = at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(boxes.device());
  return order.index_select(0, kept);
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
}

}  // namespace ops
}  // namespace ctnode
