// Autograd of ctnode::deform_conv2d: forward through the dispatcher, backward via _deform_conv2d_backward.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "../deform_conv2d.h"

namespace ctnode {
namespace ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DeformConv2dFunction : public torch::autograd::Function<DeformConv2dFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& weight,
      const at::Tensor& offset,
      const std::optional<at::Tensor>& mask,
      const std::optional<at::Tensor>& bias,
      at::IntArrayRef stride,
      at::IntArrayRef padding,
      at::IntArrayRef dilation,
      int64_t groups,
      int64_t offset_groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = deform_conv2d(
        input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups);
    ctx->save_for_backward(
        {input, weight, offset, mask.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["offset_groups"] = offset_groups;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> mask =
        saved[3].defined() ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    const std::optional<at::Tensor> bias =
        saved[4].defined() ? std::optional<at::Tensor>(saved[4]) : std::nullopt;
    auto [grad_input, grad_weight, grad_offset, grad_mask, grad_bias] = deform_conv2d_backward(
        grad_outputs[0],
        saved[0],
        saved[1],
        saved[2],
        mask,
        bias,
        ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector(),
        ctx->saved_data["groups"].toInt(),
        ctx->saved_data["offset_groups"].toInt());
    return {
        grad_input,
        grad_weight,
        grad_offset,
        mask.has_value() ? grad_mask : at::Tensor(),
        bias.has_value() ? grad_bias : at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor()};
  }
};

at::Tensor deform_conv2d_autograd(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& offset,
    const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    int64_t offset_groups) {
  return DeformConv2dFunction::apply(
      input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, Autograd, m) {
  m.impl("deform_conv2d", TORCH_FN(deform_conv2d_autograd));
  m.impl("_deform_conv2d_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ops
}  // namespace ctnode
