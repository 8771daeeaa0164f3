// Autograd of ctnode::deform_roi_pool: gradients for input and offset (RoI boxes get none).
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "../deform_roi_pool.h"

namespace ctnode {
namespace ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DeformRoiPoolFunction : public torch::autograd::Function<DeformRoiPoolFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& rois,
      const std::optional<at::Tensor>& offset,
      at::IntArrayRef output_size,
      double spatial_scale,
      int64_t sampling_ratio,
      double gamma) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output =
        deform_roi_pool(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
    ctx->save_for_backward({input, rois, offset.value_or(at::Tensor())});
    ctx->saved_data["output_size"] = output_size.vec();
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["gamma"] = gamma;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> offset =
        saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    auto [grad_input, grad_offset] = deform_roi_pool_backward(
        grad_outputs[0],
        saved[0],
        saved[1],
        offset,
        ctx->saved_data["output_size"].toIntVector(),
        ctx->saved_data["spatial_scale"].toDouble(),
        ctx->saved_data["sampling_ratio"].toInt(),
        ctx->saved_data["gamma"].toDouble());
    return {
        grad_input,
        at::Tensor(),
        offset.has_value() ? grad_offset : at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor()};
  }
};

at::Tensor deform_roi_pool_autograd(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  return DeformRoiPoolFunction::apply(
      input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, Autograd, m) {
  m.impl("deform_roi_pool", TORCH_FN(deform_roi_pool_autograd));
  m.impl("_deform_roi_pool_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ops
}  // namespace ctnode
