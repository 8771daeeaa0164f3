// CUDA kernels of ctnode::deform_conv2d: bilinear im2col / col2im fused with the mask, GEMM through ATen (cuBLAS).
#include <ATen/ATen.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../bilinear.h"
#include "../deform_conv2d.h"
#include "launch.cuh"

namespace ctnode {
namespace ops {

namespace {

// Geometry passed by value to the kernels.
struct Geometry {
  int64_t channels, height, width, kernel_w, taps, out_w, positions;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t channels_per_offset_group;
};

Geometry geometry(const DeformConv2dShape& s) {
  return {s.in_channels, s.height, s.width, s.kernel_w, s.taps(), s.out_w, s.positions(),
          s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dilation_h, s.dilation_w,
          s.channels_per_offset_group()};
}

// Sampling point of tap k at output position p, offset group og.
template <typename scalar_t>
__device__ inline Corners<scalar_t> tap_corners(
    const Geometry& g, const scalar_t* offset, int64_t og, int64_t k, int64_t p) {
  const int64_t ho = p / g.out_w;
  const int64_t wo = p - ho * g.out_w;
  const int64_t kh = k / g.kernel_w;
  const int64_t kw = k - kh * g.kernel_w;
  const int64_t tap = og * g.taps + k;
  const scalar_t y = ho * g.stride_h - g.pad_h + kh * g.dilation_h + offset[(2 * tap) * g.positions + p];
  const scalar_t x = wo * g.stride_w - g.pad_w + kw * g.dilation_w + offset[(2 * tap + 1) * g.positions + p];
  return zero_padded_corners<scalar_t>(y, x, g.height, g.width);
}

// columns[c * taps + k, p] = mask * bilinear(input[c]) at tap k of position p.
template <typename scalar_t>
__global__ void im2col_kernel(
    Geometry g, const scalar_t* input, const scalar_t* offset, const scalar_t* mask, scalar_t* columns) {
  CTNODE_CUDA_LOOP(i, g.channels * g.taps * g.positions) {
    const int64_t p = i % g.positions;
    const int64_t k = (i / g.positions) % g.taps;
    const int64_t c = i / (g.positions * g.taps);
    const int64_t og = c / g.channels_per_offset_group;
    const Corners<scalar_t> cr = tap_corners(g, offset, og, k, p);
    const scalar_t m = mask ? mask[(og * g.taps + k) * g.positions + p] : scalar_t(1);
    const scalar_t* plane = input + c * g.height * g.width;
    scalar_t v = 0;
    for (int j = 0; j < 4; ++j) {
      v += cr.weight[j] * plane[cr.index[j]];
    }
    columns[i] = m * v;
  }
}

// grad_input[c, corner] += mask * weight_j * grad_columns[c * taps + k, p].
template <typename scalar_t>
__global__ void col2im_kernel(
    Geometry g, const scalar_t* offset, const scalar_t* mask, const scalar_t* grad_columns, scalar_t* grad_input) {
  CTNODE_CUDA_LOOP(i, g.channels * g.taps * g.positions) {
    const int64_t p = i % g.positions;
    const int64_t k = (i / g.positions) % g.taps;
    const int64_t c = i / (g.positions * g.taps);
    const int64_t og = c / g.channels_per_offset_group;
    const Corners<scalar_t> cr = tap_corners(g, offset, og, k, p);
    const scalar_t m = mask ? mask[(og * g.taps + k) * g.positions + p] : scalar_t(1);
    const scalar_t grad = m * grad_columns[i];
    scalar_t* plane = grad_input + c * g.height * g.width;
    for (int j = 0; j < 4; ++j) {
      if (cr.weight[j] != scalar_t(0)) {
        gpuAtomicAdd(plane + cr.index[j], cr.weight[j] * grad);
      }
    }
  }
}

// Offset and mask gradients, one thread per (offset group, tap, position).
template <typename scalar_t>
__global__ void offset_mask_grad_kernel(
    Geometry g,
    int64_t offset_groups,
    const scalar_t* input,
    const scalar_t* offset,
    const scalar_t* mask,
    const scalar_t* grad_columns,
    scalar_t* grad_offset,
    scalar_t* grad_mask) {
  CTNODE_CUDA_LOOP(i, offset_groups * g.taps * g.positions) {
    const int64_t p = i % g.positions;
    const int64_t k = (i / g.positions) % g.taps;
    const int64_t og = i / (g.positions * g.taps);
    const Corners<scalar_t> cr = tap_corners(g, offset, og, k, p);
    const int64_t tap = og * g.taps + k;
    const scalar_t m = mask ? mask[tap * g.positions + p] : scalar_t(1);
    scalar_t gy = 0, gx = 0, gm = 0;
    const int64_t c_begin = og * g.channels_per_offset_group;
    for (int64_t c = c_begin; c < c_begin + g.channels_per_offset_group; ++c) {
      const scalar_t grad = grad_columns[(c * g.taps + k) * g.positions + p];
      const scalar_t* plane = input + c * g.height * g.width;
      for (int j = 0; j < 4; ++j) {
        const scalar_t v = grad * plane[cr.index[j]];
        gy += cr.dweight_dy[j] * v;
        gx += cr.dweight_dx[j] * v;
        gm += cr.weight[j] * v;
      }
    }
    grad_offset[(2 * tap) * g.positions + p] = m * gy;
    grad_offset[(2 * tap + 1) * g.positions + p] = m * gx;
    if (grad_mask) {
      grad_mask[tap * g.positions + p] = gm;
    }
  }
}

struct Operands {
  at::Tensor input, offset, mask, weight;  // contiguous; weight [G, O / G, C / G * taps]
};

Operands operands(
    const DeformConv2dShape& s,
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& offset,
    const std::optional<at::Tensor>& mask) {
  return {
      input.contiguous(),
      offset.contiguous(),
      mask.has_value() ? mask->contiguous() : at::Tensor(),
      weight.contiguous().view({s.groups, s.out_channels / s.groups, s.channels_per_group() * s.taps()})};
}

template <typename scalar_t>
void im2col(const DeformConv2dShape& s, const Operands& o, int64_t n, at::Tensor& columns) {
  const Geometry g = geometry(s);
  const int64_t count = s.in_channels * s.taps() * s.positions();
  const scalar_t* mask = o.mask.defined() ? o.mask[n].data_ptr<scalar_t>() : nullptr;
  im2col_kernel<scalar_t><<<blocks_for(count), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      g, o.input[n].data_ptr<scalar_t>(), o.offset[n].data_ptr<scalar_t>(), mask, columns.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor deform_conv2d_cuda(
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
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  if (s.batch == 0) {
    return output;
  }
  const Operands o = operands(s, input, weight, offset, mask);
  at::Tensor columns = at::empty({s.groups, s.channels_per_group() * s.taps(), s.positions()}, input.options());
  const at::Tensor out = output.view({s.batch, s.groups, s.out_channels / s.groups, s.positions()});
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cuda", [&] {
    for (int64_t n = 0; n < s.batch; ++n) {
      im2col<scalar_t>(s, o, n, columns);
      at::Tensor out_n = out[n];
      at::bmm_out(out_n, o.weight, columns);
    }
  });
  if (bias.has_value()) {
    output.add_(bias->view({1, s.out_channels, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_backward_cuda(
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
  const DeformConv2dShape s = check_deform_conv2d_backward(
      grad_output, input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_input = at::zeros(input.sizes(), input.options());
  at::Tensor grad_weight = at::zeros({s.groups, s.out_channels / s.groups, s.channels_per_group() * s.taps()}, input.options());
  at::Tensor grad_offset = at::zeros(offset.sizes(), input.options());
  at::Tensor grad_mask = mask.has_value() ? at::zeros(mask->sizes(), input.options()) : at::empty({0}, input.options());
  at::Tensor grad_bias = bias.has_value() ? grad_output.sum({0, 2, 3}) : at::empty({0}, input.options());
  if (s.batch > 0) {
    const Operands o = operands(s, input, weight, offset, mask);
    const at::Tensor go = grad_output.contiguous().view({s.batch, s.groups, s.out_channels / s.groups, s.positions()});
    at::Tensor columns = at::empty({s.groups, s.channels_per_group() * s.taps(), s.positions()}, input.options());
    at::Tensor grad_columns = at::empty_like(columns);
    const Geometry g = geometry(s);
    const int64_t column_count = s.in_channels * s.taps() * s.positions();
    const int64_t tap_count = s.offset_groups * s.taps() * s.positions();
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
      for (int64_t n = 0; n < s.batch; ++n) {
        const scalar_t* m = o.mask.defined() ? o.mask[n].data_ptr<scalar_t>() : nullptr;
        at::bmm_out(grad_columns, o.weight.transpose(1, 2), go[n]);
        col2im_kernel<scalar_t><<<blocks_for(column_count), kThreadsPerBlock, 0, stream>>>(
            g, o.offset[n].data_ptr<scalar_t>(), m, grad_columns.data_ptr<scalar_t>(), grad_input[n].data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        offset_mask_grad_kernel<scalar_t><<<blocks_for(tap_count), kThreadsPerBlock, 0, stream>>>(
            g, s.offset_groups, o.input[n].data_ptr<scalar_t>(), o.offset[n].data_ptr<scalar_t>(), m,
            grad_columns.data_ptr<scalar_t>(), grad_offset[n].data_ptr<scalar_t>(),
            mask.has_value() ? grad_mask[n].data_ptr<scalar_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        im2col<scalar_t>(s, o, n, columns);
        grad_weight.baddbmm_(go[n], columns.transpose(1, 2));
      }
    });
  }
  return {grad_input, grad_weight.view(weight.sizes()), grad_offset, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, CUDA, m) {
  m.impl("deform_conv2d", TORCH_FN(deform_conv2d_cuda));
  m.impl("_deform_conv2d_backward", TORCH_FN(deform_conv2d_backward_cuda));
}

}  // namespace ops
}  // namespace ctnode
