// CUDA kernels of ctnode::deform_roi_pool: one thread per (RoI, channel, bin).
#include <ATen/ATen.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../bilinear.h"
#include "../deform_roi_pool.h"
#include "launch.cuh"

namespace ctnode {
namespace ops {

namespace {

struct PoolGeometry {
  int64_t channels, height, width, pooled_h, pooled_w, sampling_ratio;
};

// Decodes item i = ((k * C + c) * ph + by) * pw + bx and locates its RoI's bins.
template <typename scalar_t>
struct Item {
  int64_t k, c, bin, by, bx;
  RoiBins<scalar_t> bins;
  scalar_t shift_y, shift_x;
};

template <typename scalar_t>
__device__ inline Item<scalar_t> item(
    const PoolGeometry& g, int64_t i, const scalar_t* rois, const scalar_t* offset, scalar_t scale, scalar_t gamma) {
  Item<scalar_t> it;
  const int64_t bins = g.pooled_h * g.pooled_w;
  it.bin = i % bins;
  it.bx = it.bin % g.pooled_w;
  it.by = it.bin / g.pooled_w;
  it.c = (i / bins) % g.channels;
  it.k = i / (bins * g.channels);
  it.bins = roi_bins<scalar_t>(rois + 5 * it.k, g.pooled_h, g.pooled_w, scale, g.sampling_ratio);
  it.shift_y = offset ? gamma * it.bins.height * offset[(2 * it.k) * bins + it.bin] : scalar_t(0);
  it.shift_x = offset ? gamma * it.bins.width * offset[(2 * it.k + 1) * bins + it.bin] : scalar_t(0);
  return it;
}

template <typename scalar_t>
__global__ void forward_kernel(
    PoolGeometry g, int64_t count, const scalar_t* input, const scalar_t* rois, const scalar_t* offset,
    scalar_t scale, scalar_t gamma, scalar_t* output) {
  CTNODE_CUDA_LOOP(i, count) {
    const Item<scalar_t> it = item(g, i, rois, offset, scale, gamma);
    const scalar_t* plane = input + (it.bins.batch * g.channels + it.c) * g.height * g.width;
    scalar_t sum = 0;
    for (int64_t iy = 0; iy < it.bins.grid_h; ++iy) {
      for (int64_t ix = 0; ix < it.bins.grid_w; ++ix) {
        scalar_t y, x;
        roi_sample_point(it.bins, it.by, it.bx, iy, ix, it.shift_y, it.shift_x, &y, &x);
        const Corners<scalar_t> cr = clamped_corners(y, x, g.height, g.width);
        for (int j = 0; j < 4; ++j) {
          sum += cr.weight[j] * plane[cr.index[j]];
        }
      }
    }
    output[i] = sum / (it.bins.grid_h * it.bins.grid_w);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(
    PoolGeometry g, int64_t count, const scalar_t* grad_output, const scalar_t* input, const scalar_t* rois,
    const scalar_t* offset, scalar_t scale, scalar_t gamma, scalar_t* grad_input, scalar_t* grad_offset) {
  CTNODE_CUDA_LOOP(i, count) {
    const Item<scalar_t> it = item(g, i, rois, offset, scale, gamma);
    const int64_t plane_offset = (it.bins.batch * g.channels + it.c) * g.height * g.width;
    const scalar_t grad = grad_output[i] / (it.bins.grid_h * it.bins.grid_w);
    scalar_t gy = 0, gx = 0;
    for (int64_t iy = 0; iy < it.bins.grid_h; ++iy) {
      for (int64_t ix = 0; ix < it.bins.grid_w; ++ix) {
        scalar_t y, x;
        roi_sample_point(it.bins, it.by, it.bx, iy, ix, it.shift_y, it.shift_x, &y, &x);
        const Corners<scalar_t> cr = clamped_corners(y, x, g.height, g.width);
        for (int j = 0; j < 4; ++j) {
          if (cr.weight[j] != scalar_t(0)) {
            gpuAtomicAdd(grad_input + plane_offset + cr.index[j], grad * cr.weight[j]);
          }
          if (grad_offset) {
            const scalar_t v = grad * input[plane_offset + cr.index[j]];
            gy += cr.dweight_dy[j] * v;
            gx += cr.dweight_dx[j] * v;
          }
        }
      }
    }
    if (grad_offset) {
      const int64_t bins = g.pooled_h * g.pooled_w;
      gpuAtomicAdd(grad_offset + (2 * it.k) * bins + it.bin, gamma * it.bins.height * gy);
      gpuAtomicAdd(grad_offset + (2 * it.k + 1) * bins + it.bin, gamma * it.bins.width * gx);
    }
  }
}

at::Tensor deform_roi_pool_cuda(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  check_deform_roi_pool(input, rois, offset, output_size, sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::zeros({rois.size(0), input.size(1), output_size[0], output_size[1]}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const PoolGeometry g{input.size(1), input.size(2), input.size(3), output_size[0], output_size[1], sampling_ratio};
  const at::Tensor x = input.contiguous(), r = rois.contiguous();
  const at::Tensor off = offset.has_value() ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_roi_pool_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        g, output.numel(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
        off.defined() ? off.data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(spatial_scale),
        static_cast<scalar_t>(gamma), output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward_cuda(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  check_deform_roi_pool_backward(grad_output, input, rois, offset, output_size, sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_input = at::zeros(input.sizes(), input.options());
  at::Tensor grad_offset = offset.has_value()
      ? at::zeros({rois.size(0), 2, output_size[0], output_size[1]}, input.options())
      : at::empty({0}, input.options());
  const int64_t count = grad_output.numel();
  if (count == 0) {
    return {grad_input, grad_offset};
  }
  const PoolGeometry g{input.size(1), input.size(2), input.size(3), output_size[0], output_size[1], sampling_ratio};
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous(), r = rois.contiguous();
  const at::Tensor off = offset.has_value() ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_roi_pool_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(count), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        g, count, go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
        off.defined() ? off.data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(spatial_scale),
        static_cast<scalar_t>(gamma), grad_input.data_ptr<scalar_t>(),
        off.defined() ? grad_offset.data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_input, grad_offset};
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, CUDA, m) {
  m.impl("deform_roi_pool", TORCH_FN(deform_roi_pool_cuda));
  m.impl("_deform_roi_pool_backward", TORCH_FN(deform_roi_pool_backward_cuda));
}

}  // namespace ops
}  // namespace ctnode
