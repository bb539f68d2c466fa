// The update MLP's block loops as native operators: the same ATen calls as the Python
// loops of nca_cli/engine/fused.py (StepPlan._mlp_forward and _mlp_backward), in one call
// that holds no Python lock, so batch shards on parallel threads do not wait on each other.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/threshold_backward.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

using at::Tensor;

namespace {

// The input of every layer for the rows h: ReLU after every layer but the last.
std::vector<Tensor> hidden(const Tensor& h, at::TensorList weights, at::TensorList biases) {
  std::vector<Tensor> inputs{h};
  for (size_t i = 0; i + 1 < weights.size(); ++i) {
    inputs.push_back(at::addmm(biases[i], inputs.back(), weights[i].t()).relu_());
  }
  return inputs;
}

void mlp_forward(const Tensor& features, at::TensorList weights, at::TensorList biases,
                 const Tensor& out, int64_t block) {
  const int64_t n = features.size(0);
  for (int64_t s = 0; s < n; s += block) {
    const int64_t e = std::min(n, s + block);
    auto inputs = hidden(features.slice(0, s, e), weights, biases);
    Tensor rows = out.slice(0, s, e);
    at::addmm_out(rows, biases.back(), inputs.back(), weights.back().t());
  }
}

void mlp_backward(const Tensor& features, const Tensor& grad_out, at::TensorList weights,
                  at::TensorList biases, const c10::List<std::optional<Tensor>>& grad_weights,
                  const c10::List<std::optional<Tensor>>& grad_biases,
                  const std::optional<Tensor>& grad_in, int64_t block) {
  const int64_t n = features.size(0);
  const int64_t layers = static_cast<int64_t>(weights.size());
  for (int64_t s = 0; s < n; s += block) {
    const int64_t e = std::min(n, s + block);
    auto inputs = hidden(features.slice(0, s, e), weights, biases);
    Tensor grad = grad_out.slice(0, s, e);
    for (int64_t i = layers - 1; i >= 0; --i) {
      std::optional<Tensor> gw = grad_weights.get(i), gb = grad_biases.get(i);
      if (gw) gw->addmm_(grad.t(), inputs[i]);
      if (gb) gb->add_(grad.sum(0));
      if (i == 0) {
        if (grad_in) {
          Tensor rows = grad_in->slice(0, s, e);
          at::mm_out(rows, grad, weights[0]);
        }
        break;
      }
      grad = at::mm(grad, weights[i]);
      at::threshold_backward_out(grad, grad, inputs[i], 0.0);  // through the ReLU
    }
  }
}

}  // namespace

TORCH_LIBRARY(nca, m) {
  m.def("mlp_forward(Tensor features, Tensor[] weights, Tensor[] biases, Tensor(a!) out, "
        "int block) -> ()");
  m.def("mlp_backward(Tensor features, Tensor grad_out, Tensor[] weights, Tensor[] biases, "
        "Tensor(a!)?[] grad_weights, Tensor(b!)?[] grad_biases, Tensor(c!)? grad_in, "
        "int block) -> ()");
}

TORCH_LIBRARY_IMPL(nca, CPU, m) {
  m.impl("mlp_forward", mlp_forward);
  m.impl("mlp_backward", mlp_backward);
}
