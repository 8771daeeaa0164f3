// Schema of ctnode::deform_roi_pool and its backward, argument checks, dispatcher calls.
#include "deform_roi_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace ctnode {
namespace ops {

void check_deform_roi_pool(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    int64_t sampling_ratio) {
  TORCH_CHECK(input.dim() == 4, "deform_roi_pool: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(
      rois.dim() == 2 && rois.size(1) == 5,
      "deform_roi_pool: rois must be [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(
      input.is_floating_point() && rois.scalar_type() == input.scalar_type(),
      "deform_roi_pool: input and rois must share one floating dtype, got ", input.scalar_type(),
      " and ", rois.scalar_type());
  TORCH_CHECK(input.device() == rois.device(), "deform_roi_pool: input and rois must be on one device");
  TORCH_CHECK(
      output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0,
      "deform_roi_pool: output_size must be two positive values (ph, pw), got ", output_size);
  TORCH_CHECK(sampling_ratio >= 0, "deform_roi_pool: sampling_ratio must be >= 0 (0 = adaptive)");
  if (offset.has_value()) {
    const std::vector<int64_t> expected{rois.size(0), 2, output_size[0], output_size[1]};
    TORCH_CHECK(
        offset->sizes() == at::IntArrayRef(expected),
        "deform_roi_pool: offset must be [K, 2, ph, pw] = ", expected, ", got ", offset->sizes());
    TORCH_CHECK(
        offset->scalar_type() == input.scalar_type() && offset->device() == input.device(),
        "deform_roi_pool: offset must have the dtype and device of input");
  }
}

void check_deform_roi_pool_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    int64_t sampling_ratio) {
  check_deform_roi_pool(input, rois, offset, output_size, sampling_ratio);
  TORCH_CHECK(
      grad_output.sizes() ==
          at::IntArrayRef({rois.size(0), input.size(1), output_size[0], output_size[1]}),
      "deform_roi_pool backward: grad_output must be [K, C, ph, pw], got ", grad_output.sizes());
}

at::Tensor deform_roi_pool(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ctnode::deform_roi_pool", "")
                       .typed<decltype(deform_roi_pool)>();
  return op.call(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
}

std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ctnode::_deform_roi_pool_backward", "")
                       .typed<decltype(deform_roi_pool_backward)>();
  return op.call(
      grad_output, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
}

TORCH_LIBRARY_FRAGMENT(ctnode, m) {
  m.def(
      "deform_roi_pool(Tensor input, Tensor rois, Tensor? offset, int[2] output_size, "
      "float spatial_scale, int sampling_ratio, float gamma) -> Tensor");
  m.def(
      "_deform_roi_pool_backward(Tensor grad_output, Tensor input, Tensor rois, Tensor? offset, "
      "int[2] output_size, float spatial_scale, int sampling_ratio, float gamma) -> (Tensor, Tensor)");
}

}  // namespace ops
}  // namespace ctnode
