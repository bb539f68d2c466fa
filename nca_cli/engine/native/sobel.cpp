// The fixed-filter (Sobel) perception of the fused step at the selected cells only, and its
// adjoint, as native operators: each selected cell reads (or, for the adjoint, adds to) the
// channel vectors of its 3x3 neighbourhood, which are contiguous in a channels-last state.
// The tensor-operation version (StepPlan._sobel_rows and _sobel_adjoint in
// nca_cli/engine/fused.py) convolves the whole grid and then gathers or scatters the rows,
// passing over the data three times. Zero padding: cells beyond the border contribute 0;
// circular padding: the grid wraps around (each batch element's plane on its own).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>

using at::Tensor;

namespace {

struct Grid {
  int64_t batch, height, width, channels, filters, rows;
  bool circular;
};

// The shapes, checked: x or grad_x (B, C, H, W) channels-last contiguous, rows (n, F * C)
// contiguous, taps (F - 1, 9, C) contiguous (filter, 3x3 tap in row-major order, channel),
// idx (n) int64 or none (every cell, in order).
Grid check(const Tensor& state, const Tensor& rows, const Tensor& taps,
           const std::optional<Tensor>& idx, bool circular, const char* op) {
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
  return {state.size(0), state.size(2), state.size(3), c, f, rows.size(0), circular};
}

// Where cell sits: its row i and column j in its plane, and whether all 8 neighbours exist.
struct Cell {
  int64_t i, j;
  bool inner;
  Cell(const Grid& g, int64_t cell) {
    const int64_t line = cell / g.width;
    j = cell - line * g.width;
    i = line % g.height;
    inner = i > 0 && i + 1 < g.height && j > 0 && j + 1 < g.width;
  }
  bool has(const Grid& g, int t) const {
    const int64_t di = t / 3 - 1, dj = t % 3 - 1;
    return i + di >= 0 && i + di < g.height && j + dj >= 0 && j + dj < g.width;
  }
  // The offset in cells of tap t's neighbour in a grid that wraps around.
  int64_t wrapped(const Grid& g, int t) const {
    const int64_t ni = (i + t / 3 - 1 + g.height) % g.height;
    const int64_t nj = (j + t % 3 - 1 + g.width) % g.width;
    return (ni - i) * g.width + (nj - j);
  }
};

// fn(r, cell, at) for every selected row r: its cell, and where that sits.
template <typename Fn>
inline void for_rows(const Grid& g, const int64_t* cell_of, Fn&& fn) {
  for (int64_t r = 0; r < g.rows; ++r) {
    const int64_t cell = cell_of ? cell_of[r] : r;
    fn(r, cell, Cell(g, cell));
  }
}

// The offset of tap t's neighbour from the cell, in values.
inline int64_t offset(const Grid& g, int t) {
  return ((t / 3 - 1) * g.width + (t % 3 - 1)) * g.channels;
}

// fn(t, offset) for the 3x3 taps t (row-major) of the cell's neighbours that exist (all of
// them, wrapped, when the grid is circular), with the neighbour's offset in values. Cells
// off the border (most of them) take a loop without bounds checks, unrolled.
template <typename Fn>
inline void for_taps(const Grid& g, const Cell& at, Fn&& fn) {
  if (at.inner) {
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) fn(t, offset(g, t));
    return;
  }
  for (int t = 0; t < 9; ++t) {
    if (g.circular) {
      fn(t, at.wrapped(g, t) * g.channels);
    } else if (at.has(g, t)) {
      fn(t, offset(g, t));
    }
  }
}

// L channels as one value: a GCC vector (the compiler emits the build's widest instructions
// for its arithmetic), or the scalar itself. Written as plain loops over the channels, the
// kernels' speed was at the mercy of the vectoriser: 2.5-3.5x the time, depending on what
// else the file held.
template <typename T, int L>
struct Lanes {
  typedef T V __attribute__((vector_size(sizeof(T) * L)));
};
template <typename T>
struct Lanes<T, 1> {
  using V = T;
};

template <typename T, int L>
inline typename Lanes<T, L>::V load(const T* p) {
  typename Lanes<T, L>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, typename V>
inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(v));
}

// The kernels take the channel count C as a template argument where it is a common one
// (their channel loops then have constant trip counts), else 0: read from the grid. They
// process the channels in vectors of L values (L divides C).

// dst[r] = [state at cell idx[r], then per filter f >= 1 the 3x3 correlation there].
template <typename T, int L, int C>
struct Rows {
  static void run(const Grid& g, const T* __restrict__ state, const T* __restrict__ k,
                  const int64_t* cell_of, T* __restrict__ dst) {
    using V = typename Lanes<T, L>::V;
    const int64_t c = C ? C : g.channels;
    for_rows(g, cell_of, [&](int64_t r, int64_t cell, const Cell& at) {
      T* __restrict__ row = dst + r * g.filters * c;
      const T* centre = state + cell * c;
      for (int64_t q = 0; q < c; q += L) store(row + q, load<T, L>(centre + q));
      for (int64_t f = 1; f < g.filters; ++f) {
        const T* w = k + (f - 1) * 9 * c;
        for (int64_t q = 0; q < c; q += L) {
          V acc{};
          for_taps(g, at, [&](int t, int64_t off) {
            acc += load<T, L>(w + t * c + q) * load<T, L>(centre + off + q);
          });
          store(row + f * c + q, acc);
        }
      }
    });
  }
};

// state += the adjoint of Rows applied to src: each selected cell adds its identity
// gradient to itself and its filter gradients, times the taps, to its neighbours.
template <typename T, int L, int C>
struct Adjoint {
  static void run(const Grid& g, const T* __restrict__ src, const T* __restrict__ k,
                  const int64_t* cell_of, T* __restrict__ state) {
    using V = typename Lanes<T, L>::V;
    const int64_t c = C ? C : g.channels;
    for_rows(g, cell_of, [&](int64_t r, int64_t cell, const Cell& at) {
      const T* __restrict__ row = src + r * g.filters * c;
      T* centre = state + cell * c;
      for (int64_t q = 0; q < c; q += L) {
        store(centre + q, load<T, L>(centre + q) + load<T, L>(row + q));
      }
      for_taps(g, at, [&](int t, int64_t off) {
        T* nb = centre + off;
        for (int64_t q = 0; q < c; q += L) {
          V sum = load<T, L>(nb + q);
          for (int64_t f = 1; f < g.filters; ++f) {
            sum += load<T, L>(k + ((f - 1) * 9 + t) * c + q) * load<T, L>(row + f * c + q);
          }
          store(nb + q, sum);
        }
      });
    });
  }
};

// Kernel on src into dst, for their dtype, in vectors of the most channels (up to 64 bytes)
// that divide the channel count.
template <template <typename, int, int> class Kernel>
void launch(const Grid& g, const Tensor& src, const Tensor& taps, const std::optional<Tensor>& idx,
            const Tensor& dst) {
  const int64_t* cell_of = idx ? idx->const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "sobel", [&] {
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    const scalar_t* k = taps.const_data_ptr<scalar_t>();
    scalar_t* d = dst.mutable_data_ptr<scalar_t>();
    constexpr int widest = 64 / sizeof(scalar_t);
    constexpr int lanes8 = std::min(8, widest), lanes16 = std::min(16, widest);
    switch (g.channels) {
      case 8: return Kernel<scalar_t, lanes8, 8>::run(g, s, k, cell_of, d);
      case 16: return Kernel<scalar_t, lanes16, 16>::run(g, s, k, cell_of, d);
      case 32: return Kernel<scalar_t, widest, 32>::run(g, s, k, cell_of, d);
    }
    int lanes = 1;
    while (lanes < widest && g.channels % (2 * lanes) == 0) lanes *= 2;
    switch (lanes) {
      case 16:  // float only: lanes stop at widest
        if constexpr (widest >= 16) return Kernel<scalar_t, 16, 0>::run(g, s, k, cell_of, d);
        [[fallthrough]];
      case 8: return Kernel<scalar_t, 8, 0>::run(g, s, k, cell_of, d);
      case 4: return Kernel<scalar_t, 4, 0>::run(g, s, k, cell_of, d);
      case 2: return Kernel<scalar_t, 2, 0>::run(g, s, k, cell_of, d);
      default: return Kernel<scalar_t, 1, 0>::run(g, s, k, cell_of, d);
    }
  });
}

void sobel_rows(const Tensor& x, const Tensor& taps, const std::optional<Tensor>& idx,
                bool circular, const Tensor& out) {
  launch<Rows>(check(x, out, taps, idx, circular, "sobel_rows"), x, taps, idx, out);
}

void sobel_adjoint(const Tensor& grad_rows, const Tensor& taps, const std::optional<Tensor>& idx,
                   bool circular, const Tensor& grad_x) {
  launch<Adjoint>(check(grad_x, grad_rows, taps, idx, circular, "sobel_adjoint"), grad_rows,
                  taps, idx, grad_x);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nca, m) {
  m.def("sobel_rows(Tensor x, Tensor taps, Tensor? idx, bool circular, Tensor(a!) out) -> ()");
  m.def(
      "sobel_adjoint(Tensor grad_rows, Tensor taps, Tensor? idx, bool circular, "
      "Tensor(a!) grad_x) -> ()");
}

TORCH_LIBRARY_IMPL(nca, CPU, m) {
  m.impl("sobel_rows", sobel_rows);
  m.impl("sobel_adjoint", sobel_adjoint);
}
