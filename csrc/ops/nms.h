// Greedy non-maximum suppression of 2D boxes: entry point, checks, IoU.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

namespace ctnode {
namespace ops {

// Checks boxes [N, 4] and scores [N].
void check_nms(const at::Tensor& boxes, const at::Tensor& scores);

// IoU of two axis-aligned boxes (x1, y1, x2, y2); 0/0 (two empty boxes) is
// NaN, which never exceeds a threshold.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t box_iou(const scalar_t* a, const scalar_t* b) {
  scalar_t inter = 1, area_a = 1, area_b = 1;
  for (int d = 0; d < 2; ++d) {
    const scalar_t lo = a[d] > b[d] ? a[d] : b[d];
    const scalar_t hi = a[2 + d] < b[2 + d] ? a[2 + d] : b[2 + d];
    const scalar_t extent = hi - lo;
    inter *= extent > 0 ? extent : scalar_t(0);
    area_a *= a[2 + d] - a[d];
    area_b *= b[2 + d] - b[d];
  }
  return inter / (area_a + area_b - inter);
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

}  // namespace ops
}  // namespace ctnode
