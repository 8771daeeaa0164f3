// Greedy non-maximum suppression for 2D and 3D boxes: entry point, checks, IoU.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

namespace ctnode {
namespace ops {

// Checks boxes [N, 4] or [N, 6] and scores [N]; returns the box dimension (2 or 3).
int64_t check_nms(const at::Tensor& boxes, const at::Tensor& scores);

// IoU of two axis-aligned boxes given as (min corner..., max corner...);
// 0/0 (two empty boxes) is NaN, which never exceeds a threshold.
template <int D, typename scalar_t>
C10_HOST_DEVICE inline scalar_t box_iou(const scalar_t* a, const scalar_t* b) {
  scalar_t inter = 1, volume_a = 1, volume_b = 1;
  for (int d = 0; d < D; ++d) {
    const scalar_t lo = a[d] > b[d] ? a[d] : b[d];
    const scalar_t hi = a[D + d] < b[D + d] ? a[D + d] : b[D + d];
    const scalar_t extent = hi - lo;
    inter *= extent > 0 ? extent : scalar_t(0);
    volume_a *= a[D + d] - a[d];
    volume_b *= b[D + d] - b[d];
  }
  return inter / (volume_a + volume_b - inter);
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

}  // namespace ops
}  // namespace ctnode
