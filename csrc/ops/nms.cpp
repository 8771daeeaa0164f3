// Schema of ctnode::nms (2D boxes), argument checks, dispatcher call.
#include "nms.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace ctnode {
namespace ops {

void check_nms(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(
      boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be [N, 4] (x1, y1, x2, y2), got ", boxes.sizes());
  TORCH_CHECK(
      scores.dim() == 1 && scores.size(0) == boxes.size(0),
      "nms: scores must be [N = ", boxes.size(0), "], got ", scores.sizes());
  TORCH_CHECK(
      boxes.is_floating_point() && scores.scalar_type() == boxes.scalar_type(),
      "nms: boxes and scores must share one floating dtype, got ", boxes.scalar_type(), " and ",
      scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "nms: boxes and scores must be on one device");
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ctnode::nms", "")
                       .typed<decltype(nms)>();
  return op.call(boxes, scores, iou_threshold);
}

TORCH_LIBRARY_FRAGMENT(ctnode, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
}

}  // namespace ops
}  // namespace ctnode
