// CPU kernels of ctnode::deform_roi_pool: parallel over RoIs forward, over channels for the input gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../bilinear.h"
#include "../deform_roi_pool.h"

namespace ctnode {
namespace ops {

namespace {

// The bilinear corners of every sample of every bin of one RoI, bin-major,
// with the bin's sample count; the shift of bin (by, bx) is
// gamma * (height, width) * offset[:, by, bx].
template <typename scalar_t>
struct RoiSamples {
  RoiBins<scalar_t> bins;
  std::vector<Corners<scalar_t>> corners;

  int64_t per_bin() const { return bins.grid_h * bins.grid_w; }
};

template <typename scalar_t>
RoiSamples<scalar_t> roi_samples(
    const scalar_t* roi,
    const scalar_t* offset,
    int64_t pooled_h,
    int64_t pooled_w,
    int64_t height,
    int64_t width,
    scalar_t spatial_scale,
    int64_t sampling_ratio,
    scalar_t gamma) {
  RoiSamples<scalar_t> r;
  r.bins = roi_bins<scalar_t>(roi, pooled_h, pooled_w, spatial_scale, sampling_ratio);
  const int64_t bins = pooled_h * pooled_w;
  r.corners.reserve(bins * r.per_bin());
  for (int64_t by = 0; by < pooled_h; ++by) {
    for (int64_t bx = 0; bx < pooled_w; ++bx) {
      const int64_t bin = by * pooled_w + bx;
      const scalar_t shift_y = offset ? gamma * r.bins.height * offset[bin] : scalar_t(0);
      const scalar_t shift_x = offset ? gamma * r.bins.width * offset[bins + bin] : scalar_t(0);
      for (int64_t iy = 0; iy < r.bins.grid_h; ++iy) {
        for (int64_t ix = 0; ix < r.bins.grid_w; ++ix) {
          scalar_t y, x;
          roi_sample_point(r.bins, by, bx, iy, ix, shift_y, shift_x, &y, &x);
          r.corners.push_back(clamped_corners(y, x, height, width));
        }
      }
    }
  }
  return r;
}

void check_batch_indices(const at::Tensor& rois, int64_t batch) {
  if (rois.size(0) == 0) {
    return;
  }
  const at::Tensor index = rois.select(1, 0);
  TORCH_CHECK(
      index.min().item<double>() >= 0 && index.max().item<double>() < batch,
      "deform_roi_pool: rois[:, 0] must be batch indices in [0, ", batch, ")");
}

at::Tensor deform_roi_pool_cpu(
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  check_deform_roi_pool(input, rois, offset, output_size, sampling_ratio);
  check_batch_indices(rois, input.size(0));
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t ph = output_size[0], pw = output_size[1];
  at::Tensor output = at::zeros({rois.size(0), channels, ph, pw}, input.options());
  if (rois.size(0) == 0 || channels == 0) {
    return output;
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois.contiguous();
  const at::Tensor off = offset.has_value() ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_roi_pool_cpu", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    at::parallel_for(0, rois.size(0), 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const RoiSamples<scalar_t> s = roi_samples<scalar_t>(
            r.data_ptr<scalar_t>() + 5 * k,
            off.defined() ? off.data_ptr<scalar_t>() + 2 * ph * pw * k : nullptr, ph, pw, height,
            width, spatial_scale, sampling_ratio, gamma);
        const int64_t per_bin = s.per_bin();
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* plane = in + (s.bins.batch * channels + c) * height * width;
          for (int64_t bin = 0; bin < ph * pw; ++bin) {
            scalar_t sum = 0;
            for (int64_t i = bin * per_bin; i < (bin + 1) * per_bin; ++i) {
              const Corners<scalar_t>& cr = s.corners[i];
              for (int j = 0; j < 4; ++j) {
                sum += cr.weight[j] * plane[cr.index[j]];
              }
            }
            out[(k * channels + c) * ph * pw + bin] = sum / per_bin;
          }
        }
      }
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& offset,
    at::IntArrayRef output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    double gamma) {
  check_deform_roi_pool_backward(grad_output, input, rois, offset, output_size, sampling_ratio);
  const int64_t count = rois.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const int64_t ph = output_size[0], pw = output_size[1];
  at::Tensor grad_input = at::zeros(input.sizes(), input.options());
  at::Tensor grad_offset = offset.has_value() ? at::zeros({count, 2, ph, pw}, input.options())
                                              : at::empty({0}, input.options());
  if (count == 0 || channels == 0) {
    return {grad_input, grad_offset};
  }
  check_batch_indices(rois, input.size(0));
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois.contiguous();
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor off = offset.has_value() ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_roi_pool_backward_cpu", [&] {
    std::vector<RoiSamples<scalar_t>> samples;
    samples.reserve(count);
    for (int64_t k = 0; k < count; ++k) {
      samples.push_back(roi_samples<scalar_t>(
          r.data_ptr<scalar_t>() + 5 * k,
          off.defined() ? off.data_ptr<scalar_t>() + 2 * ph * pw * k : nullptr, ph, pw, height,
          width, spatial_scale, sampling_ratio, gamma));
    }
    const scalar_t* in = x.data_ptr<scalar_t>();
    const scalar_t* g_out = go.data_ptr<scalar_t>();
    scalar_t* g_in = grad_input.data_ptr<scalar_t>();
    // Each channel plane of grad_input is owned by one thread: no atomics.
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t k = 0; k < count; ++k) {
          const RoiSamples<scalar_t>& s = samples[k];
          const int64_t per_bin = s.per_bin();
          scalar_t* plane = g_in + (s.bins.batch * channels + c) * height * width;
          for (int64_t bin = 0; bin < ph * pw; ++bin) {
            const scalar_t g = g_out[(k * channels + c) * ph * pw + bin] / per_bin;
            for (int64_t i = bin * per_bin; i < (bin + 1) * per_bin; ++i) {
              for (int j = 0; j < 4; ++j) {
                plane[s.corners[i].index[j]] += g * s.corners[i].weight[j];
              }
            }
          }
        }
      }
    });
    if (!off.defined()) {
      return;
    }
    scalar_t* g_off = grad_offset.data_ptr<scalar_t>();
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const RoiSamples<scalar_t>& s = samples[k];
        const int64_t per_bin = s.per_bin();
        for (int64_t bin = 0; bin < ph * pw; ++bin) {
          scalar_t gy = 0, gx = 0;
          for (int64_t c = 0; c < channels; ++c) {
            const scalar_t* plane = in + (s.bins.batch * channels + c) * height * width;
            const scalar_t g = g_out[(k * channels + c) * ph * pw + bin];
            for (int64_t i = bin * per_bin; i < (bin + 1) * per_bin; ++i) {
              for (int j = 0; j < 4; ++j) {
                const scalar_t v = g * plane[s.corners[i].index[j]];
                gy += s.corners[i].dweight_dy[j] * v;
                gx += s.corners[i].dweight_dx[j] * v;
              }
            }
          }
          g_off[(2 * k) * ph * pw + bin] = gamma * s.bins.height * gy / per_bin;
          g_off[(2 * k + 1) * ph * pw + bin] = gamma * s.bins.width * gx / per_bin;
        }
      }
    });
  });
  return {grad_input, grad_offset};
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, CPU, m) {
  m.impl("deform_roi_pool", TORCH_FN(deform_roi_pool_cpu));
  m.impl("_deform_roi_pool_backward", TORCH_FN(deform_roi_pool_backward_cpu));
}

}  // namespace ops
}  // namespace ctnode
