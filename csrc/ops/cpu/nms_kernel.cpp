// CPU kernel of ctnode::nms: stable score order, greedy suppression.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../nms.h"

namespace ctnode {
namespace ops {

namespace {

template <typename scalar_t>
std::vector<int64_t> greedy_keep(const scalar_t* boxes, const int64_t* order, int64_t count, double threshold) {
  std::vector<int64_t> keep;
  std::vector<char> removed(count, 0);
  for (int64_t a = 0; a < count; ++a) {
    if (removed[a]) {
      continue;
    }
    const scalar_t* box = boxes + 4 * order[a];
    keep.push_back(order[a]);
    for (int64_t b = a + 1; b < count; ++b) {
      if (!removed[b] && box_iou(box, boxes + 4 * order[b]) > threshold) {
        removed[b] = 1;
      }
    }
  }
  return keep;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms(boxes, scores);
  if (boxes.size(0) == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor b = boxes.contiguous();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    keep = greedy_keep(b.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), b.size(0), iou_threshold);
  });
  return at::tensor(keep, boxes.options().dtype(at::kLong));
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
}

}  // namespace ops
}  // namespace ctnode
