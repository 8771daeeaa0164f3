// CPU kernels of ctnode::deform_conv2d: bilinear im2col fused with the mask, GEMM through ATen.
//
// Layout: the input is read channels-last ([H * W, C] per image) so every
// sample gathers contiguous channel vectors; the sampling taps of an output
// position (four corners and weights) are computed once and reused for all
// channels of an offset group. Columns of a chunk of output positions are
// [groups, positions, taps, C / groups], so each group's GEMM operand is one
// contiguous matrix. The backward never uses atomics: weight gradients
// accumulate chunk by chunk in a fixed order, offset and mask gradients are
// owned by their output position, and input gradients by their channel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "../bilinear.h"
#include "../deform_conv2d.h"
#include "vectorize.h"

namespace ctnode {
namespace ops {

namespace {

// Column elements of one chunk of output positions (1 MB in float): the
// chunk's GEMM is efficient and its columns stay in cache.
constexpr int64_t kChunkColumnElements = 1 << 18;
// Column-gradient elements the backward holds at once (a span of positions),
// which bounds its memory and the number of parallel regions it opens.
constexpr int64_t kSpanColumnElements = 1 << 22;
// Channels of one input-gradient task (one AVX-512 vector of float), and
// weight elements of one task summing the chunks' weight gradients.
constexpr int64_t kScatterChannels = 16;
constexpr int64_t kSumElements = 1 << 14;
// Positions of one task transposing the input to channels-last.
constexpr int64_t kTransposePositions = 256;

int64_t chunk_positions(const DeformConv2dShape& s) {
  return std::min(s.positions(), std::max<int64_t>(16, kChunkColumnElements / (s.in_channels * s.taps())));
}

// C[m, n] = A[m, k] @ B[k, n] (+ C when accumulate), row-major with leading
// dimensions, on the calling thread. float goes through ATen's batch-reduce
// GEMM, oneDNN's JIT microkernel (the code conv2d runs; ATen falls back to
// BLAS on a CPU it has no kernel for): MKL's sgemm takes its generic path on
// AMD processors and is 3-4x slower on these shapes. Other types use at::mm.
template <typename scalar_t>
void tile_gemm(
    int64_t m,
    int64_t n,
    int64_t k,
    const scalar_t* a,
    int64_t lda,
    const scalar_t* b,
    int64_t ldb,
    scalar_t* c,
    int64_t ldc,
    bool accumulate) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c);
  } else {
    // Tensors over the buffers (made on this thread, so no caller state matters).
    const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
    const at::Tensor a_t = at::from_blob(const_cast<scalar_t*>(a), {m, k}, {lda, 1}, options);
    const at::Tensor b_t = at::from_blob(const_cast<scalar_t*>(b), {k, n}, {ldb, 1}, options);
    at::Tensor c_t = at::from_blob(c, {m, n}, {ldc, 1}, options);
    if (accumulate) {
      c_t.addmm_(a_t, b_t);
    } else {
      at::mm_out(c_t, a_t, b_t);
    }
  }
}

// Ends a worker's run of tile_gemm calls (frees the microkernel's hardware state, e.g. AMX tiles).
template <typename scalar_t>
void release_tile_gemm() {
  if constexpr (std::is_same_v<scalar_t, float>) {
    at::native::cpublas::brgemm_release(false);
  }
}

// Runs worker(take) once on each thread; take(task) hands out tasks of
// [0, count) one at a time and returns false when none is left. A thread
// slowed by other processes then takes fewer tasks instead of holding the
// others at the end (a static split waits for the slowest thread).
template <typename Worker>
void share_tasks(int64_t count, const Worker& worker) {
  std::atomic<int64_t> next{0};
  const auto take = [&](int64_t& task) {
    task = next.fetch_add(1, std::memory_order_relaxed);
    return task < count;
  };
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    worker(take);
  });
}

template <typename scalar_t>
struct Tap {
  Corners<scalar_t> corners;
  scalar_t mask;
};

// Calls fn(group, channel_in_group, channel, count) for each run of channels
// in [begin, end) that lies within one convolution group.
template <typename Fn>
inline void for_each_group_run(int64_t begin, int64_t end, int64_t channels_per_group, Fn fn) {
  while (begin < end) {
    const int64_t g = begin / channels_per_group;
    const int64_t cg = begin - g * channels_per_group;
    const int64_t count = std::min(end - begin, channels_per_group - cg);
    fn(g, cg, begin, count);
    begin += count;
  }
}

// Taps of positions [p_begin + q_begin, p_begin + q_end) of one image,
// stored at taps[(q * taps + k) * offset_groups + og].
template <typename scalar_t>
void compute_taps(
    const DeformConv2dShape& s,
    const scalar_t* offset,
    const scalar_t* mask,
    int64_t p_begin,
    int64_t q_begin,
    int64_t q_end,
    Tap<scalar_t>* taps) {
  const int64_t positions = s.positions();
  const int64_t k_count = s.taps();
  const int64_t og_count = s.offset_groups;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t p = p_begin + q;
    const int64_t ho = p / s.out_w;
    const int64_t wo = p - ho * s.out_w;
    for (int64_t k = 0; k < k_count; ++k) {
      const int64_t kh = k / s.kernel_w;
      const int64_t kw = k - kh * s.kernel_w;
      const scalar_t base_y = ho * s.stride_h - s.pad_h + kh * s.dilation_h;
      const scalar_t base_x = wo * s.stride_w - s.pad_w + kw * s.dilation_w;
      for (int64_t og = 0; og < og_count; ++og) {
        const int64_t tap = og * k_count + k;
        Tap<scalar_t>& t = taps[(q * k_count + k) * og_count + og];
        t.corners = zero_padded_corners<scalar_t>(
            base_y + offset[(2 * tap) * positions + p],
            base_x + offset[(2 * tap + 1) * positions + p],
            s.height,
            s.width);
        t.mask = mask ? mask[tap * positions + p] : scalar_t(1);
      }
    }
  }
}

// columns[g, q, k, cg] = mask * bilinear(input[channel g * Cg + cg]) at tap k of position q.
template <typename scalar_t>
CTNODE_CPU_CLONES void gather_columns(
    const DeformConv2dShape& s,
    const scalar_t* input,
    const Tap<scalar_t>* taps,
    int64_t capacity,
    int64_t q_begin,
    int64_t q_end,
    scalar_t* columns) {
  const int64_t channels = s.in_channels;
  const int64_t cg_count = s.channels_per_group();
  const int64_t cog_count = s.channels_per_offset_group();
  const int64_t k_count = s.taps();
  const int64_t og_count = s.offset_groups;
  for (int64_t q = q_begin; q < q_end; ++q) {
    for (int64_t k = 0; k < k_count; ++k) {
      for (int64_t og = 0; og < og_count; ++og) {
        const Tap<scalar_t>& t = taps[(q * k_count + k) * og_count + og];
        const scalar_t w0 = t.mask * t.corners.weight[0];
        const scalar_t w1 = t.mask * t.corners.weight[1];
        const scalar_t w2 = t.mask * t.corners.weight[2];
        const scalar_t w3 = t.mask * t.corners.weight[3];
        const scalar_t* s0 = input + t.corners.index[0] * channels;
        const scalar_t* s1 = input + t.corners.index[1] * channels;
        const scalar_t* s2 = input + t.corners.index[2] * channels;
        const scalar_t* s3 = input + t.corners.index[3] * channels;
        for_each_group_run(og * cog_count, (og + 1) * cog_count, cg_count,
            [&](int64_t g, int64_t cg, int64_t c, int64_t count) {
              scalar_t* dst = columns + ((g * capacity + q) * k_count + k) * cg_count + cg;
              for (int64_t i = 0; i < count; ++i) {
                dst[i] = w0 * s0[c + i] + w1 * s1[c + i] + w2 * s2[c + i] + w3 * s3[c + i];
              }
            });
      }
    }
  }
}

// dot[j] += sum_i grad[i] * input[index[j] * channels + i] for the four
// corners j, in kLanes independent partial sums per corner: the compiler
// vectorises it without reassociating, and the order is fixed (deterministic).
template <typename scalar_t>
inline void corner_dots(
    const scalar_t* grad,
    const scalar_t* input,
    const int64_t* index,
    int64_t channels,
    int64_t count,
    scalar_t* dot) {
  constexpr int kLanes = 32 / sizeof(scalar_t);
  const scalar_t* src[4];
  for (int j = 0; j < 4; ++j) {
    src[j] = input + index[j] * channels;
  }
  scalar_t lanes[4][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int j = 0; j < 4; ++j) {
      for (int l = 0; l < kLanes; ++l) {
        lanes[j][l] += grad[i + l] * src[j][i + l];
      }
    }
  }
  for (int j = 0; j < 4; ++j) {
    scalar_t sum = 0;
    for (int64_t r = i; r < count; ++r) {
      sum += grad[r] * src[j][r];
    }
    for (int l = 0; l < kLanes; ++l) {
      sum += lanes[j][l];
    }
    dot[j] += sum;
  }
}

// Offset and mask gradients of positions [q_begin, q_end) of a chunk, from
// the column gradients: d out / d y = mask * sum_j dweight_dy_j * x_j, etc.
template <typename scalar_t>
CTNODE_CPU_CLONES void offset_mask_grad(
    const DeformConv2dShape& s,
    const scalar_t* input,
    const Tap<scalar_t>* taps,
    const scalar_t* grad_columns,
    int64_t capacity,
    int64_t p_begin,
    int64_t q_begin,
    int64_t q_end,
    scalar_t* grad_offset,
    scalar_t* grad_mask) {
  const int64_t positions = s.positions();
  const int64_t channels = s.in_channels;
  const int64_t cg_count = s.channels_per_group();
  const int64_t cog_count = s.channels_per_offset_group();
  const int64_t k_count = s.taps();
  const int64_t og_count = s.offset_groups;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t p = p_begin + q;
    for (int64_t k = 0; k < k_count; ++k) {
      for (int64_t og = 0; og < og_count; ++og) {
        const Tap<scalar_t>& t = taps[(q * k_count + k) * og_count + og];
        scalar_t dot[4] = {0, 0, 0, 0};
        for_each_group_run(og * cog_count, (og + 1) * cog_count, cg_count,
            [&](int64_t g, int64_t cg, int64_t c, int64_t count) {
              const scalar_t* gc = grad_columns + ((g * capacity + q) * k_count + k) * cg_count + cg;
              corner_dots(gc, input + c, t.corners.index, channels, count, dot);
            });
        scalar_t gy = 0, gx = 0, gm = 0;
        for (int j = 0; j < 4; ++j) {
          gy += t.corners.dweight_dy[j] * dot[j];
          gx += t.corners.dweight_dx[j] * dot[j];
          gm += t.corners.weight[j] * dot[j];
        }
        const int64_t tap = og * k_count + k;
        grad_offset[(2 * tap) * positions + p] = t.mask * gy;
        grad_offset[(2 * tap + 1) * positions + p] = t.mask * gx;
        if (grad_mask) {
          grad_mask[tap * positions + p] = gm;
        }
      }
    }
  }
}

// grad_input[corner, c] += mask * weight_j * grad_columns for channels
// [c_begin, c_end): each channel is owned by one thread, and updated in the
// fixed order of (position, tap, corner), so the result is deterministic.
template <typename scalar_t>
CTNODE_CPU_CLONES void scatter_input_grad(
    const DeformConv2dShape& s,
    const Tap<scalar_t>* taps,
    const scalar_t* grad_columns,
    int64_t capacity,
    int64_t count_q,
    int64_t c_begin,
    int64_t c_end,
    scalar_t* grad_input) {
  const int64_t channels = s.in_channels;
  const int64_t cg_count = s.channels_per_group();
  const int64_t cog_count = s.channels_per_offset_group();
  const int64_t k_count = s.taps();
  const int64_t og_first = c_begin / cog_count;
  const int64_t og_last = (c_end - 1) / cog_count;
  for (int64_t q = 0; q < count_q; ++q) {
    for (int64_t k = 0; k < k_count; ++k) {
      for (int64_t og = og_first; og <= og_last; ++og) {
        const Tap<scalar_t>& t = taps[(q * k_count + k) * s.offset_groups + og];
        const int64_t begin = std::max(c_begin, og * cog_count);
        const int64_t end = std::min(c_end, (og + 1) * cog_count);
        for_each_group_run(begin, end, cg_count,
            [&](int64_t g, int64_t cg, int64_t c, int64_t count) {
              const scalar_t* gc = grad_columns + ((g * capacity + q) * k_count + k) * cg_count + cg;
              for (int j = 0; j < 4; ++j) {
                const scalar_t w = t.mask * t.corners.weight[j];
                if (w == scalar_t(0)) {
                  continue;
                }
                scalar_t* dst = grad_input + t.corners.index[j] * channels + c;
                for (int64_t i = 0; i < count; ++i) {
                  dst[i] += w * gc[i];
                }
              }
            });
      }
    }
  }
}

// dst[o * stride + q] = tile[q * outs + o] + bias[o], for q < count: the
// [positions, outputs] GEMM tile into the [outputs, positions] output, in
// blocks of positions that keep the reads and writes in cache lines.
template <typename scalar_t>
CTNODE_CPU_CLONES void write_output_tile(
    const scalar_t* tile,
    int64_t count,
    int64_t outs,
    const scalar_t* bias,
    int64_t stride,
    scalar_t* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t q0 = 0; q0 < count; q0 += kBlock) {
    const int64_t q1 = std::min(count, q0 + kBlock);
    for (int64_t o = 0; o < outs; ++o) {
      const scalar_t b = bias ? bias[o] : scalar_t(0);
      scalar_t* row = dst + o * stride;
      for (int64_t q = q0; q < q1; ++q) {
        row[q] = tile[q * outs + o] + b;
      }
    }
  }
}

// rows[o * count + q] = cols[q * outs + o] = grad_output[o * stride + q] for
// q < count: one group's gradient tile in both layouts its two GEMMs read.
template <typename scalar_t>
CTNODE_CPU_CLONES void read_grad_output_tile(
    const scalar_t* grad_output,
    int64_t stride,
    int64_t count,
    int64_t outs,
    scalar_t* rows,
    scalar_t* cols) {
  for (int64_t o = 0; o < outs; ++o) {
    std::copy(grad_output + o * stride, grad_output + o * stride + count, rows + o * count);
  }
  constexpr int64_t kBlock = 16;
  for (int64_t q0 = 0; q0 < count; q0 += kBlock) {
    const int64_t q1 = std::min(count, q0 + kBlock);
    for (int64_t o = 0; o < outs; ++o) {
      for (int64_t q = q0; q < q1; ++q) {
        cols[q * outs + o] = rows[o * count + q];
      }
    }
  }
}

// dst[q * channels + c] = src[c * plane + q] for q < count, in 16 x 16
// blocks so that both sides are read and written a cache line at a time.
template <typename scalar_t>
CTNODE_CPU_CLONES void transpose_tile(
    const scalar_t* src,
    int64_t channels,
    int64_t plane,
    int64_t count,
    scalar_t* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
    const int64_t c1 = std::min(channels, c0 + kBlock);
    for (int64_t q0 = 0; q0 < count; q0 += kBlock) {
      const int64_t q1 = std::min(count, q0 + kBlock);
      for (int64_t q = q0; q < q1; ++q) {
        for (int64_t c = c0; c < c1; ++c) {
          dst[q * channels + c] = src[c * plane + q];
        }
      }
    }
  }
}

struct Prepared {
  at::Tensor input;    // [N, H * W, C]
  at::Tensor offset;   // [N, 2 * OG * K, P]
  at::Tensor mask;     // [N, OG * K, P] or undefined
  at::Tensor weight;   // [G, O / G, K * C / G], taps before channels
};

// input as [N, H * W, C]: a view when it is channels-last already; from a
// contiguous [N, C, H, W] by transposing tiles of channels and positions on
// all threads (ATen's strided copy takes twice as long); else ATen's copy.
at::Tensor channels_last(const at::Tensor& input) {
  const at::Tensor view = input.permute({0, 2, 3, 1});
  if (view.is_contiguous() || !input.is_contiguous()) {
    return view.contiguous();
  }
  const int64_t channels = input.size(1);
  const int64_t plane = input.size(2) * input.size(3);
  at::Tensor out = at::empty({input.size(0), plane, channels}, input.options());
  const int64_t blocks = (plane + kTransposePositions - 1) / kTransposePositions;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_channels_last", [&] {
    const scalar_t* src = input.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    share_tasks(input.size(0) * blocks, [&](const auto& take) {
      for (int64_t task; take(task);) {
        const int64_t n = task / blocks;
        const int64_t p_begin = (task - n * blocks) * kTransposePositions;
        transpose_tile<scalar_t>(
            src + n * channels * plane + p_begin, channels, plane,
            std::min(kTransposePositions, plane - p_begin), dst + (n * plane + p_begin) * channels);
      }
    });
  });
  return out.view({input.size(0), input.size(2), input.size(3), channels});
}

Prepared prepare(
    const DeformConv2dShape& s,
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& offset,
    const std::optional<at::Tensor>& mask) {
  Prepared p;
  p.input = channels_last(input);
  p.offset = offset.contiguous();
  if (mask.has_value()) {
    p.mask = mask->contiguous();
  }
  p.weight = weight
                 .reshape({s.groups, s.out_channels / s.groups, s.channels_per_group(), s.taps()})
                 .permute({0, 1, 3, 2})
                 .contiguous()
                 .view({s.groups, s.out_channels / s.groups, s.taps() * s.channels_per_group()});
  return p;
}

// output[n, :, chunk] = weight @ columns (+ bias): per group, the chunk's
// [positions, outputs] tile from one GEMM, written once (transposed, with the
// bias) while it is in cache.
template <typename scalar_t>
void forward_kernel(
    const DeformConv2dShape& s,
    const Prepared& p,
    const std::optional<at::Tensor>& bias,
    at::Tensor& output) {
  const int64_t positions = s.positions();
  const int64_t capacity = chunk_positions(s);
  const int64_t chunks_per_image = (positions + capacity - 1) / capacity;
  const int64_t hw = s.height * s.width;
  const int64_t og_stride = 2 * s.offset_groups * s.taps() * positions;
  const int64_t mask_stride = s.offset_groups * s.taps() * positions;
  const int64_t outs = s.out_channels / s.groups;
  const int64_t kc = s.taps() * s.channels_per_group();
  const at::Tensor weight_t = p.weight.transpose(1, 2).contiguous();  // [G, K * C / G, O / G]
  const at::Tensor bias_values = bias.has_value() ? bias->contiguous() : at::Tensor();
  const scalar_t* weight = weight_t.data_ptr<scalar_t>();
  const scalar_t* bias_data = bias_values.defined() ? bias_values.data_ptr<scalar_t>() : nullptr;
  scalar_t* out = output.data_ptr<scalar_t>();
  share_tasks(s.batch * chunks_per_image, [&](const auto& take) {
    std::vector<Tap<scalar_t>> taps(capacity * s.taps() * s.offset_groups);
    std::vector<scalar_t> columns(s.groups * capacity * kc);
    std::vector<scalar_t> tile(capacity * outs);
    for (int64_t task; take(task);) {
      const int64_t n = task / chunks_per_image;
      const int64_t p_begin = (task - n * chunks_per_image) * capacity;
      const int64_t count = std::min(capacity, positions - p_begin);
      const scalar_t* mask = p.mask.defined() ? p.mask.data_ptr<scalar_t>() + n * mask_stride : nullptr;
      compute_taps<scalar_t>(
          s, p.offset.data_ptr<scalar_t>() + n * og_stride, mask, p_begin, 0, count, taps.data());
      gather_columns<scalar_t>(
          s, p.input.data_ptr<scalar_t>() + n * hw * s.in_channels, taps.data(), capacity, 0,
          count, columns.data());
      for (int64_t g = 0; g < s.groups; ++g) {
        tile_gemm<scalar_t>(
            count, outs, kc, columns.data() + g * capacity * kc, kc, weight + g * kc * outs, outs,
            tile.data(), outs, false);
        write_output_tile<scalar_t>(
            tile.data(), count, outs, bias_data ? bias_data + g * outs : nullptr, positions,
            out + (n * s.out_channels + g * outs) * positions + p_begin);
      }
    }
    release_tile_gemm<scalar_t>();
  });
}

at::Tensor deform_conv2d_cpu(
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
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  if (s.batch == 0) {
    return output;
  }
  const Prepared p = prepare(s, input, weight, offset, mask);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu", [&] {
    forward_kernel<scalar_t>(s, p, bias, output);
  });
  return output;
}

// The backward walks each image in spans of up to kSpanColumnElements
// columns, with two parallel regions per span (few synchronisations, which
// matters on a loaded server). 1: per chunk of positions, taps, columns (in
// a buffer of the task), column gradients and the chunk's weight gradient
// (single-threaded GEMMs on cache-hot data) and offset/mask gradients.
// 2: input gradients per block of channels, and the chunks' weight gradients
// summed in chunk order per block of weight elements.
template <typename scalar_t>
void backward_kernel(
    const DeformConv2dShape& s,
    const Prepared& p,
    const at::Tensor& grad_output,
    at::Tensor& grad_input,
    at::Tensor& grad_weight,
    at::Tensor& grad_offset,
    at::Tensor& grad_mask) {
  const int64_t positions = s.positions();
  const int64_t chunk = chunk_positions(s);
  const int64_t chunks_per_span =
      std::max<int64_t>(1, kSpanColumnElements / (s.in_channels * s.taps() * chunk));
  const int64_t span = std::min(positions, chunks_per_span * chunk);
  const int64_t hw = s.height * s.width;
  const int64_t kc = s.taps() * s.channels_per_group();
  const int64_t weight_numel = grad_weight.numel();
  const int64_t offset_stride = 2 * s.offset_groups * s.taps() * positions;
  const int64_t mask_stride = s.offset_groups * s.taps() * positions;
  const int64_t outs = s.out_channels / s.groups;
  const scalar_t* go = grad_output.data_ptr<scalar_t>();
  const scalar_t* weight = p.weight.data_ptr<scalar_t>();
  std::vector<Tap<scalar_t>> taps(span * s.taps() * s.offset_groups);
  at::Tensor grad_columns = at::empty({s.groups, span, kc}, p.input.options());
  at::Tensor chunk_grad_weight =
      at::empty({chunks_per_span, s.groups, outs, kc}, p.input.options());
  for (int64_t n = 0; n < s.batch; ++n) {
    const scalar_t* input = p.input.data_ptr<scalar_t>() + n * hw * s.in_channels;
    const scalar_t* offset = p.offset.data_ptr<scalar_t>() + n * offset_stride;
    const scalar_t* mask = p.mask.defined() ? p.mask.data_ptr<scalar_t>() + n * mask_stride : nullptr;
    scalar_t* g_input = grad_input.data_ptr<scalar_t>() + n * hw * s.in_channels;
    scalar_t* g_offset = grad_offset.data_ptr<scalar_t>() + n * offset_stride;
    scalar_t* g_mask = grad_mask.defined() ? grad_mask.data_ptr<scalar_t>() + n * mask_stride : nullptr;
    for (int64_t p_begin = 0; p_begin < positions; p_begin += span) {
      const int64_t count = std::min(span, positions - p_begin);
      const int64_t chunks = (count + chunk - 1) / chunk;
      share_tasks(chunks, [&](const auto& take) {
        std::vector<scalar_t> columns(s.groups * chunk * kc);
        std::vector<scalar_t> go_rows(chunk * outs);  // [outputs, positions] of one group
        std::vector<scalar_t> go_cols(chunk * outs);  // [positions, outputs]
        for (int64_t c; take(c);) {
          const int64_t q_begin = c * chunk;
          const int64_t width = std::min(count, q_begin + chunk) - q_begin;
          Tap<scalar_t>* chunk_taps = taps.data() + q_begin * s.taps() * s.offset_groups;
          compute_taps<scalar_t>(s, offset, mask, p_begin + q_begin, 0, width, chunk_taps);
          gather_columns<scalar_t>(s, input, chunk_taps, chunk, 0, width, columns.data());
          for (int64_t g = 0; g < s.groups; ++g) {
            read_grad_output_tile<scalar_t>(
                go + (n * s.out_channels + g * outs) * positions + p_begin + q_begin, positions, width,
                outs, go_rows.data(), go_cols.data());
            tile_gemm<scalar_t>(
                outs, kc, width, go_rows.data(), width, columns.data() + g * chunk * kc, kc,
                chunk_grad_weight.data_ptr<scalar_t>() + (c * s.groups + g) * outs * kc, kc, false);
            tile_gemm<scalar_t>(
                width, kc, outs, go_cols.data(), outs, weight + g * outs * kc, kc,
                grad_columns.data_ptr<scalar_t>() + (g * span + q_begin) * kc, kc, false);
          }
          offset_mask_grad<scalar_t>(
              s, input, taps.data(), grad_columns.data_ptr<scalar_t>(), span, p_begin, q_begin,
              q_begin + width, g_offset, g_mask);
        }
        release_tile_gemm<scalar_t>();
      });
      const scalar_t* partial = chunk_grad_weight.data_ptr<scalar_t>();
      scalar_t* g_weight = grad_weight.data_ptr<scalar_t>();
      const int64_t channel_tasks = (s.in_channels + kScatterChannels - 1) / kScatterChannels;
      const int64_t sum_tasks = (weight_numel + kSumElements - 1) / kSumElements;
      share_tasks(channel_tasks + sum_tasks, [&](const auto& take) {
        for (int64_t task; take(task);) {
          if (task < channel_tasks) {
            const int64_t c_begin = task * kScatterChannels;
            scatter_input_grad<scalar_t>(
                s, taps.data(), grad_columns.data_ptr<scalar_t>(), span, count, c_begin,
                std::min(s.in_channels, c_begin + kScatterChannels), g_input);
            continue;
          }
          const int64_t e_begin = (task - channel_tasks) * kSumElements;
          const int64_t e_end = std::min(weight_numel, e_begin + kSumElements);
          for (int64_t c = 0; c < chunks; ++c) {
            for (int64_t e = e_begin; e < e_end; ++e) {
              g_weight[e] += partial[c * weight_numel + e];
            }
          }
        }
      });
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
deform_conv2d_backward_cpu(
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
  const int64_t og = s.out_channels / s.groups;
  const int64_t kc = s.taps() * s.channels_per_group();
  at::Tensor grad_input = at::zeros({s.batch, s.height * s.width, s.in_channels}, input.options());
  at::Tensor grad_weight = at::zeros({s.groups, og, kc}, input.options());
  at::Tensor grad_offset = at::zeros_like(offset, at::MemoryFormat::Contiguous);
  at::Tensor grad_mask = mask.has_value() ? at::zeros_like(*mask, at::MemoryFormat::Contiguous)
                                          : at::empty({0}, input.options());
  at::Tensor grad_bias = bias.has_value() ? grad_output.sum({0, 2, 3}) : at::empty({0}, input.options());
  if (s.batch > 0) {
    const Prepared p = prepare(s, input, weight, offset, mask);
    at::Tensor masked_grad = mask.has_value() ? grad_mask : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
      backward_kernel<scalar_t>(
          s, p, grad_output.contiguous(), grad_input, grad_weight, grad_offset, masked_grad);
    });
  }
  return {
      grad_input.view({s.batch, s.height, s.width, s.in_channels}).permute({0, 3, 1, 2}).contiguous(),
      grad_weight.view({s.groups, og, s.taps(), s.channels_per_group()})
          .permute({0, 1, 3, 2})
          .reshape(weight.sizes())
          .contiguous(),
      grad_offset,
      grad_mask,
      grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(ctnode, CPU, m) {
  m.impl("deform_conv2d", TORCH_FN(deform_conv2d_cpu));
  m.impl("_deform_conv2d_backward", TORCH_FN(deform_conv2d_backward_cpu));
}

}  // namespace ops
}  // namespace ctnode
