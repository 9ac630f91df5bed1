// Argument checks shared by the CPU and CUDA kernels of quadlinear_ap. The Python wrapper
// validates user input first with friendlier messages; these guard direct op calls.
#pragma once

#include <ATen/ATen.h>

namespace hapvr {

inline void check_quadlinear_ap_args(const at::Tensor& scores, const at::Tensor& labels,
                                     double delta, double rho) {
  TORCH_CHECK(scores.dim() == 2, "quadlinear_ap: scores must be [Q, M], got ", scores.sizes());
  TORCH_CHECK(labels.sizes() == scores.sizes(), "quadlinear_ap: labels must have the shape of scores ",
              scores.sizes(), ", got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kChar, "quadlinear_ap: labels must be int8, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.device() == scores.device(),
              "quadlinear_ap: labels must be on the device of scores");
  TORCH_CHECK(delta > 0, "quadlinear_ap: delta must be > 0, got ", delta);
  TORCH_CHECK(rho >= 0, "quadlinear_ap: rho must be >= 0, got ", rho);
}

inline void check_quadlinear_ap_grad(const at::Tensor& grad_risk, const at::Tensor& scores) {
  TORCH_CHECK(grad_risk.dim() == 1 && grad_risk.size(0) == scores.size(0),
              "quadlinear_ap_backward: grad_risk must be [Q] = [", scores.size(0), "], got ",
              grad_risk.sizes());
  TORCH_CHECK(grad_risk.device() == scores.device(),
              "quadlinear_ap_backward: grad_risk must be on the device of scores");
}

}  // namespace hapvr
