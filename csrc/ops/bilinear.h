// Bilinear sampling coefficients shared by the CPU and CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace ctnode {
namespace ops {

// Four corner taps of one bilinear sample: flat indices into an H x W plane
// and their weights. A corner outside the plane has weight 0 and index 0, so
// callers may read every corner without a bounds check.
template <typename scalar_t>
struct Corners {
  int64_t index[4];
  scalar_t weight[4];
  // d weight / d y and d weight / d x, for the offset gradients.
  scalar_t dweight_dy[4];
  scalar_t dweight_dx[4];
};

// Zero-padding bilinear sampling as in deformable convolution: a point
// outside (-1, height) x (-1, width) reads 0, and each corner outside the
// plane reads 0.
template <typename scalar_t>
C10_HOST_DEVICE inline Corners<scalar_t> zero_padded_corners(
    scalar_t y,
    scalar_t x,
    int64_t height,
    int64_t width) {
  Corners<scalar_t> c;
  for (int j = 0; j < 4; ++j) {
    c.index[j] = 0;
    c.weight[j] = 0;
    c.dweight_dy[j] = 0;
    c.dweight_dx[j] = 0;
  }
  if (!(y > -1 && y < height && x > -1 && x < width)) {
    return c;
  }
  // floor() for y in (-1, height): truncation, with (-1, 0) mapped to -1.
  const int64_t y0 = y < 0 ? -1 : static_cast<int64_t>(y);
  const int64_t x0 = x < 0 ? -1 : static_cast<int64_t>(x);
  const scalar_t ly = y - y0;
  const scalar_t lx = x - x0;
  const scalar_t hy = 1 - ly;
  const scalar_t hx = 1 - lx;
  const int64_t ys[2] = {y0, y0 + 1};
  const int64_t xs[2] = {x0, x0 + 1};
  const scalar_t wy[2] = {hy, ly};
  const scalar_t wx[2] = {hx, lx};
  const scalar_t dwy[2] = {-1, 1};
  const scalar_t dwx[2] = {-1, 1};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const int j = 2 * a + b;
      if (ys[a] >= 0 && ys[a] < height && xs[b] >= 0 && xs[b] < width) {
        c.index[j] = ys[a] * width + xs[b];
        c.weight[j] = wy[a] * wx[b];
        c.dweight_dy[j] = dwy[a] * wx[b];
        c.dweight_dx[j] = wy[a] * dwx[b];
      }
    }
  }
  return c;
}

}  // namespace ops
}  // namespace ctnode
