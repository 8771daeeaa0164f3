// Schema of ctnode::deform_conv2d and its backward, argument checks, dispatcher calls.
#include "deform_conv2d.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace ctnode {
namespace ops {

namespace {

void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(
      values.size() == 2,
      "deform_conv2d: ", name, " must have 2 values (h, w), got ", values.size());
  TORCH_CHECK(
      values[0] >= minimum && values[1] >= minimum,
      "deform_conv2d: ", name, " must be >= ", minimum, ", got ", values);
}

}  // namespace

DeformConv2dShape check_deform_conv2d(
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
  TORCH_CHECK(input.dim() == 4, "deform_conv2d: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "deform_conv2d: weight must be [O, C / groups, kh, kw], got ", weight.sizes());
  TORCH_CHECK(offset.dim() == 4, "deform_conv2d: offset must be [N, 2 * offset_groups * kh * kw, Ho, Wo], got ", offset.sizes());
  TORCH_CHECK(
      input.is_floating_point() && weight.scalar_type() == input.scalar_type() &&
          offset.scalar_type() == input.scalar_type(),
      "deform_conv2d: input, weight and offset must share one floating dtype, got ",
      input.scalar_type(), ", ", weight.scalar_type(), ", ", offset.scalar_type());
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1 && offset_groups >= 1, "deform_conv2d: groups and offset_groups must be >= 1");

  DeformConv2dShape s;
  s.batch = input.size(0);
  s.in_channels = input.size(1);
  s.height = input.size(2);
  s.width = input.size(3);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.groups = groups;
  s.offset_groups = offset_groups;
  s.out_h = (s.height + 2 * s.pad_h - s.dilation_h * (s.kernel_h - 1) - 1) / s.stride_h + 1;
  s.out_w = (s.width + 2 * s.pad_w - s.dilation_w * (s.kernel_w - 1) - 1) / s.stride_w + 1;

  TORCH_CHECK(
      s.in_channels % groups == 0 && s.out_channels % groups == 0,
      "deform_conv2d: in_channels (", s.in_channels, ") and out_channels (", s.out_channels,
      ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(
      s.in_channels % offset_groups == 0,
      "deform_conv2d: in_channels (", s.in_channels, ") must be divisible by offset_groups (",
      offset_groups, ")");
  TORCH_CHECK(
      weight.size(1) == s.in_channels / groups,
      "deform_conv2d: weight must be [O, C / groups = ", s.in_channels / groups, ", kh, kw], got ",
      weight.sizes());
  TORCH_CHECK(
      s.out_h > 0 && s.out_w > 0,
      "deform_conv2d: the output would be empty (", s.out_h, " x ", s.out_w,
      "); the input is smaller than the dilated kernel");
  const std::vector<int64_t> expected_offset{
      s.batch, 2 * offset_groups * s.taps(), s.out_h, s.out_w};
  TORCH_CHECK(
      offset.sizes() == at::IntArrayRef(expected_offset),
      "deform_conv2d: offset must be [N, 2 * offset_groups * kh * kw, Ho, Wo] = ",
      expected_offset, ", got ", offset.sizes());
  TORCH_CHECK(
      input.device() == weight.device() && input.device() == offset.device(),
      "deform_conv2d: input, weight and offset must be on one device");
  if (mask.has_value()) {
    const std::vector<int64_t> expected_mask{s.batch, offset_groups * s.taps(), s.out_h, s.out_w};
    TORCH_CHECK(
        mask->sizes() == at::IntArrayRef(expected_mask),
        "deform_conv2d: mask must be [N, offset_groups * kh * kw, Ho, Wo] = ", expected_mask,
        ", got ", mask->sizes());
    TORCH_CHECK(
        mask->scalar_type() == input.scalar_type() && mask->device() == input.device(),
        "deform_conv2d: mask must have the dtype and device of input");
  }
  if (bias.has_value()) {
    TORCH_CHECK(
        bias->dim() == 1 && bias->size(0) == s.out_channels,
        "deform_conv2d: bias must be [O = ", s.out_channels, "], got ", bias->sizes());
    TORCH_CHECK(
        bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
        "deform_conv2d: bias must have the dtype and device of input");
  }
  return s;
}

DeformConv2dShape check_deform_conv2d_backward(
    const at::Tensor& grad_output,
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
  const DeformConv2dShape s = check_deform_conv2d(
      input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups);
  TORCH_CHECK(
      grad_output.sizes() == at::IntArrayRef({s.batch, s.out_channels, s.out_h, s.out_w}),
      "deform_conv2d backward: grad_output must be [N, O, Ho, Wo], got ", grad_output.sizes());
  return s;
}

at::Tensor deform_conv2d(
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
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ctnode::deform_conv2d", "")
                       .typed<decltype(deform_conv2d)>();
  return op.call(input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_backward(
    const at::Tensor& grad_output,
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
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ctnode::_deform_conv2d_backward", "")
                       .typed<decltype(deform_conv2d_backward)>();
  return op.call(
      grad_output, input, weight, offset, mask, bias, stride, padding, dilation, groups,
      offset_groups);
}

TORCH_LIBRARY_FRAGMENT(ctnode, m) {
  m.def(
      "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int offset_groups) -> Tensor");
  m.def(
      "_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor offset, "
      "Tensor? mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int offset_groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace ops
}  // namespace ctnode
