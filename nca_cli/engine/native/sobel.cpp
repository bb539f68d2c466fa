// The fixed-filter (Sobel) perception of the fused step at the selected cells only, and its
// adjoint, as native operators: each selected cell reads (or, for the adjoint, adds to) the
// channel vectors of its 3x3 neighbourhood, which are contiguous in a channels-last state.
// The tensor-operation version (StepPlan._sobel_rows and _sobel_adjoint in
// nca_cli/engine/fused.py) convolves the whole grid and then gathers or scatters the rows,
// passing over the data three times. Zero padding: cells beyond the border contribute 0.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

using at::Tensor;

namespace {

struct Grid {
  int64_t batch, height, width, channels, filters, rows;
};

// The shapes, checked: x or grad_x (B, C, H, W) channels-last contiguous, rows (n, F * C)
// contiguous, taps (F - 1, 9, C) contiguous (filter, 3x3 tap in row-major order, channel),
// idx (n) int64 or none (every cell, in order).
Grid check(const Tensor& state, const Tensor& rows, const Tensor& taps,
           const std::optional<Tensor>& idx, const char* op) {
  TORCH_CHECK(state.dim() == 4 && state.is_contiguous(at::MemoryFormat::ChannelsLast),
              op, ": the state must be (B, C, H, W) channels-last contiguous");
  const int64_t c = state.size(1);
  TORCH_CHECK(taps.dim() == 3 && taps.size(1) == 9 && taps.size(2) == c && taps.is_contiguous(),
              op, ": taps must be (F - 1, 9, C) contiguous");
  const int64_t f = taps.size(0) + 1;
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == f * c && rows.is_contiguous(), op,
              ": rows must be (n, F * C) contiguous");
  TORCH_CHECK(state.scalar_type() == rows.scalar_type() &&
                  state.scalar_type() == taps.scalar_type(),
              op, ": state, rows and taps must share a dtype");
  const int64_t cells = state.size(0) * state.size(2) * state.size(3);
  if (idx) {
    TORCH_CHECK(idx->scalar_type() == at::kLong && idx->is_contiguous() &&
                    idx->numel() == rows.size(0),
                op, ": idx must be n contiguous int64 row numbers");
  } else {
    TORCH_CHECK(rows.size(0) == cells, op, ": without idx, one row per cell");
  }
  return {state.size(0), state.size(2), state.size(3), c, f, rows.size(0)};
}

// The kernels take their channel count C as a template argument where it is a common one
// (the channel loops are then unrolled and vectorised), else 0: read it from the grid.

// dst[r] = [state at cell idx[r], then per filter f >= 1 the 3x3 correlation there].
template <typename T, int64_t C>
struct Rows {
  static void run(const Grid& g, const T* __restrict__ state, const T* __restrict__ k,
                  const int64_t* cell_of, T* __restrict__ dst) {
    const int64_t c = C ? C : g.channels, line = g.width * c;
    for (int64_t r = 0; r < g.rows; ++r, dst += g.filters * c) {
      const int64_t cell = cell_of ? cell_of[r] : r;
      const int64_t i = (cell / g.width) % g.height, j = cell % g.width;
      const T* centre = state + cell * c;
      for (int64_t ch = 0; ch < c; ++ch) dst[ch] = centre[ch];
      for (int64_t f = 1; f < g.filters; ++f) {
        T* __restrict__ acc = dst + f * c;
        for (int64_t ch = 0; ch < c; ++ch) acc[ch] = 0;
        for (int64_t t = 0; t < 9; ++t) {
          const int64_t di = t / 3 - 1, dj = t % 3 - 1;
          if (i + di < 0 || i + di >= g.height || j + dj < 0 || j + dj >= g.width) continue;
          const T* nb = centre + di * line + dj * c;
          const T* w = k + ((f - 1) * 9 + t) * c;
          for (int64_t ch = 0; ch < c; ++ch) acc[ch] += w[ch] * nb[ch];
        }
      }
    }
  }
};

// state += the adjoint of Rows applied to src: each selected cell adds its identity
// gradient to itself and its filter gradients, times the taps, to its neighbours.
template <typename T, int64_t C>
struct Adjoint {
  static void run(const Grid& g, const T* __restrict__ src, const T* __restrict__ k,
                  const int64_t* cell_of, T* __restrict__ state) {
    const int64_t c = C ? C : g.channels, line = g.width * c;
    for (int64_t r = 0; r < g.rows; ++r, src += g.filters * c) {
      const int64_t cell = cell_of ? cell_of[r] : r;
      const int64_t i = (cell / g.width) % g.height, j = cell % g.width;
      T* centre = state + cell * c;
      for (int64_t ch = 0; ch < c; ++ch) centre[ch] += src[ch];
      for (int64_t t = 0; t < 9; ++t) {
        const int64_t di = t / 3 - 1, dj = t % 3 - 1;
        if (i + di < 0 || i + di >= g.height || j + dj < 0 || j + dj >= g.width) continue;
        T* __restrict__ nb = centre + di * line + dj * c;
        for (int64_t f = 1; f < g.filters; ++f) {
          const T* w = k + ((f - 1) * 9 + t) * c;
          const T* gf = src + f * c;
          for (int64_t ch = 0; ch < c; ++ch) nb[ch] += w[ch] * gf[ch];
        }
      }
    }
  }
};

// Kernel on src into dst, for their dtype and channel count.
template <template <typename, int64_t> class Kernel>
void launch(const Grid& g, const Tensor& src, const Tensor& taps, const std::optional<Tensor>& idx,
            const Tensor& dst) {
  const int64_t* cell_of = idx ? idx->const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "sobel", [&] {
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    const scalar_t* k = taps.const_data_ptr<scalar_t>();
    scalar_t* d = dst.mutable_data_ptr<scalar_t>();
    switch (g.channels) {
      case 8: return Kernel<scalar_t, 8>::run(g, s, k, cell_of, d);
      case 16: return Kernel<scalar_t, 16>::run(g, s, k, cell_of, d);
      case 32: return Kernel<scalar_t, 32>::run(g, s, k, cell_of, d);
      default: return Kernel<scalar_t, 0>::run(g, s, k, cell_of, d);
    }
  });
}

void sobel_rows(const Tensor& x, const Tensor& taps, const std::optional<Tensor>& idx,
                const Tensor& out) {
  launch<Rows>(check(x, out, taps, idx, "sobel_rows"), x, taps, idx, out);
}

void sobel_adjoint(const Tensor& grad_rows, const Tensor& taps, const std::optional<Tensor>& idx,
                   const Tensor& grad_x) {
  launch<Adjoint>(check(grad_x, grad_rows, taps, idx, "sobel_adjoint"), grad_rows, taps, idx,
                  grad_x);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nca, m) {
  m.def("sobel_rows(Tensor x, Tensor taps, Tensor? idx, Tensor(a!) out) -> ()");
  m.def("sobel_adjoint(Tensor grad_rows, Tensor taps, Tensor? idx, Tensor(a!) grad_x) -> ()");
}

TORCH_LIBRARY_IMPL(nca, CPU, m) {
  m.impl("sobel_rows", sobel_rows);
  m.impl("sobel_adjoint", sobel_adjoint);
}
