// The alive mask's cell selection as native operators: what NCA.alive and the fused step's
// selection (nca_cli/engine/fused.py) compute with a dozen small tensor operations per
// step, in one pass over the cells each. Rows are cells in (batch, y, x) order.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

using at::Tensor;

namespace {

// Where a padded coordinate p in [-1, n] reads from, or -1 for a zero: F.pad's modes.
int64_t source(int64_t p, int64_t n, int mode) {
  if (p >= 0 && p < n) return p;
  switch (mode) {
    case 1: return (p + n) % n;                   // circular
    case 2: return p < 0 ? -p : 2 * (n - 1) - p;  // reflect
    case 3: return p < 0 ? 0 : n - 1;             // replicate
    default: return -1;                           // zeros
  }
}

int padding_mode(const std::string& padding) {
  if (padding == "zeros") return 0;
  if (padding == "circular") return 1;
  if (padding == "reflect") return 2;
  if (padding == "replicate") return 3;
  TORCH_CHECK(false, "unknown padding mode '", padding, "'");
}

// torch.maximum: a NaN wins.
template <typename T>
inline T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// For every plane of `get` (b planes of h x w), whether the maximum of its 3x3
// neighbourhood, padded by `mode`, is above `threshold` (in T, as torch compares); with
// `pool` false, whether the cell's own value is. Separable: a row pass, then a column pass.
template <typename T, typename Get>
std::vector<uint8_t> above(int64_t b, int64_t h, int64_t w, bool pool, int mode, T threshold,
                           Get get) {
  std::vector<uint8_t> out(b * h * w);
  if (!pool) {
    for (int64_t n = 0; n < b; ++n)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) out[(n * h + i) * w + j] = get(n, i, j) > threshold;
    return out;
  }
  const int64_t pw = w + 2;
  std::vector<T> padded((h + 2) * pw), rows((h + 2) * w);
  std::vector<int64_t> cols(pw);
  for (int64_t q = 0; q < pw; ++q) cols[q] = source(q - 1, w, mode);
  for (int64_t n = 0; n < b; ++n) {
    for (int64_t p = 0; p < h + 2; ++p) {
      const int64_t si = source(p - 1, h, mode);
      T* line = padded.data() + p * pw;
      for (int64_t q = 0; q < pw; ++q) {
        line[q] = (si < 0 || cols[q] < 0) ? T(0) : get(n, si, cols[q]);
      }
      T* row = rows.data() + p * w;
      for (int64_t j = 0; j < w; ++j) row[j] = nan_max(nan_max(line[j], line[j + 1]), line[j + 2]);
    }
    uint8_t* plane = out.data() + n * h * w;
    for (int64_t i = 0; i < h; ++i) {
      const T* r0 = rows.data() + i * w;
      for (int64_t j = 0; j < w; ++j) {
        plane[i * w + j] = nan_max(nan_max(r0[j], r0[j + w]), r0[j + 2 * w]) > threshold;
      }
    }
  }
  return out;
}

// The alive map of the state x (B, C, H, W) from its channel `channel`.
std::vector<uint8_t> alive_map(const Tensor& x, int64_t channel, double threshold, bool pool,
                               int mode) {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  std::vector<uint8_t> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "alive_map", [&] {
    const scalar_t* alpha = x.const_data_ptr<scalar_t>() + channel * x.stride(1);
    const auto sb = x.stride(0), sh = x.stride(2), sw = x.stride(3);
    out = above(b, h, w, pool, mode, static_cast<scalar_t>(threshold),
                [&](int64_t n, int64_t i, int64_t j) { return alpha[n * sb + i * sh + j * sw]; });
  });
  return out;
}

Tensor as_mask(const std::vector<uint8_t>& cells, int64_t b, int64_t h, int64_t w) {
  Tensor mask = at::empty({b, 1, h, w}, at::TensorOptions().dtype(at::kBool));
  std::copy(cells.begin(), cells.end(), mask.mutable_data_ptr<bool>());
  return mask;
}

// The rows where `flags` is set, in order.
Tensor rows_where(const std::vector<uint8_t>& flags, int64_t count) {
  Tensor idx = at::empty({count}, at::TensorOptions().dtype(at::kLong));
  int64_t* out = idx.mutable_data_ptr<int64_t>();
  for (int64_t r = 0, k = 0; r < static_cast<int64_t>(flags.size()); ++r) {
    if (flags[r]) out[k++] = r;
  }
  return idx;
}

// The step's selection: the alive map `pre` of x, the rows the MLP runs on (cells that
// fire, when `fire` is given, and have a cell of `pre` within the alive pooling's reach),
// and every cell's 1-based position among those rows (0 when not selected).
std::tuple<Tensor, Tensor, Tensor> alive_select(const Tensor& x, int64_t channel,
                                                double threshold, bool pool,
                                                const std::string& padding,
                                                const std::optional<Tensor>& fire) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "alive_select: a (B, C, H, W) CPU state");
  const int mode = padding_mode(padding);
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  const auto pre = alive_map(x, channel, threshold, pool, mode);
  auto select = above(b, h, w, pool, mode, uint8_t(0), [&](int64_t n, int64_t i, int64_t j) {
    return pre[(n * h + i) * w + j];
  });
  if (fire) {
    TORCH_CHECK(fire->scalar_type() == at::kBool && fire->numel() == b * h * w,
                "alive_select: fire must be a bool (B, 1, H, W) mask");
    const Tensor f = fire->contiguous();
    const bool* on = f.const_data_ptr<bool>();
    for (size_t r = 0; r < select.size(); ++r) select[r] = select[r] && on[r];
  }
  Tensor inv = at::empty({b * h * w}, at::TensorOptions().dtype(at::kInt));
  int32_t* position = inv.mutable_data_ptr<int32_t>();
  int32_t count = 0;
  for (size_t r = 0; r < select.size(); ++r) {
    count += select[r];
    position[r] = select[r] ? count : 0;
  }
  return {as_mask(pre, b, h, w), rows_where(select, count), inv};
}

// The rows of the new state y that die: not alive in both the step's `pre` map and y's.
Tensor dead_rows(const Tensor& pre, const Tensor& y, int64_t channel, double threshold, bool pool,
                 const std::string& padding) {
  TORCH_CHECK(y.dim() == 4 && y.device().is_cpu(), "dead_rows: a (B, C, H, W) CPU state");
  const int64_t b = y.size(0), h = y.size(2), w = y.size(3);
  auto dead = alive_map(y, channel, threshold, pool, padding_mode(padding));
  const Tensor p = pre.contiguous();
  const bool* before = p.const_data_ptr<bool>();
  int64_t count = 0;
  for (size_t r = 0; r < dead.size(); ++r) {
    dead[r] = !(dead[r] && before[r]);
    count += dead[r];
  }
  return rows_where(dead, count);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nca, m) {
  m.def("alive_select(Tensor x, int channel, float threshold, bool pool, str padding, "
        "Tensor? fire) -> (Tensor, Tensor, Tensor)");
  m.def("dead_rows(Tensor pre, Tensor y, int channel, float threshold, bool pool, "
        "str padding) -> Tensor");
}

TORCH_LIBRARY_IMPL(nca, CPU, m) {
  m.impl("alive_select", alive_select);
  m.impl("dead_rows", dead_rows);
}
