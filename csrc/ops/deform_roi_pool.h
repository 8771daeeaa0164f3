// Deformable RoI pooling (aligned RoIAlign when offset-free): entry points, checks, bin geometry.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <optional>
#include <tuple>

namespace ctnode {
namespace ops {

// Checks input [N, C, H, W], rois [K, 5] and offset [K, 2, ph, pw].
void check_deform_roi_pool(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    int64_t sampling_ratio);

// check_deform_roi_pool, plus grad_output [K, C, ph, pw].
void check_deform_roi_pool_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    int64_t sampling_ratio);

// Where one RoI's bins lie: RoIAlign with aligned=True (pixel centres at
// +0.5, so the box starts half a pixel earlier), and a grid_h x grid_w grid
// of samples per bin (adaptive: ceil(size / bins), at least 1).
template <typename scalar_t>
struct RoiBins {
  int64_t batch;
  scalar_t start_y, start_x, height, width, bin_h, bin_w;
  int64_t grid_h, grid_w;
};

template <typename scalar_t>
C10_HOST_DEVICE inline RoiBins<scalar_t> roi_bins(
    const scalar_t* roi,
    int64_t pooled_h,
    int64_t pooled_w,
    scalar_t spatial_scale,
    int64_t sampling_ratio) {
  RoiBins<scalar_t> b;
  b.batch = static_cast<int64_t>(roi[0]);
  b.start_x = roi[1] * spatial_scale - scalar_t(0.5);
  b.start_y = roi[2] * spatial_scale - scalar_t(0.5);
  b.width = (roi[3] - roi[1]) * spatial_scale;
  b.height = (roi[4] - roi[2]) * spatial_scale;
  b.bin_h = b.height / pooled_h;
  b.bin_w = b.width / pooled_w;
  if (sampling_ratio > 0) {
    b.grid_h = b.grid_w = sampling_ratio;
  } else {
    const scalar_t gh = b.height / pooled_h;
    const scalar_t gw = b.width / pooled_w;
    const int64_t ch = static_cast<int64_t>(gh);
    const int64_t cw = static_cast<int64_t>(gw);
    b.grid_h = (gh > ch ? ch + 1 : ch);
    b.grid_w = (gw > cw ? cw + 1 : cw);
    b.grid_h = b.grid_h < 1 ? 1 : b.grid_h;
    b.grid_w = b.grid_w < 1 ? 1 : b.grid_w;
  }
  return b;
}

// Sample (iy, ix) of bin (by, bx), shifted by (dy, dx) in bin-normalised units times gamma.
template <typename scalar_t>
C10_HOST_DEVICE inline void roi_sample_point(
    const RoiBins<scalar_t>& b,
    int64_t by,
    int64_t bx,
    int64_t iy,
    int64_t ix,
    scalar_t shift_y,
    scalar_t shift_x,
    scalar_t* y,
    scalar_t* x) {
  *y = b.start_y + by * b.bin_h + (iy + scalar_t(0.5)) * b.bin_h / b.grid_h + shift_y;
  *x = b.start_x + bx * b.bin_w + (ix + scalar_t(0.5)) * b.bin_w / b.grid_w + shift_x;
}

at::Tensor deform_roi_pool(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma);

// Returns (grad_input, grad_offset); grad_offset has zero elements without offset.
std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma);

}  // namespace ops
}  // namespace ctnode
