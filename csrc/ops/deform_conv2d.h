// Modulated deformable convolution (DCNv2): dispatcher entry points and shape checks.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace ctnode {
namespace ops {

// Sizes of one deformable convolution, checked once and shared by the kernels.
struct DeformConv2dShape {
  int64_t batch, in_channels, height, width;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, offset_groups;
  int64_t out_h, out_w;

  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t positions() const { return out_h * out_w; }
  int64_t channels_per_group() const { return in_channels / groups; }
  int64_t channels_per_offset_group() const { return in_channels / offset_groups; }
};

// Checks every argument (ranks, shapes, dtypes, devices) and returns the sizes.
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
    int64_t offset_groups);

// check_deform_conv2d, plus grad_output [N, O, Ho, Wo].
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
    int64_t offset_groups);

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
    int64_t offset_groups);

// Returns (grad_input, grad_weight, grad_offset, grad_mask, grad_bias);
// grad_mask and grad_bias have zero elements when mask or bias is absent.
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
    int64_t offset_groups);

}  // namespace ops
}  // namespace ctnode
