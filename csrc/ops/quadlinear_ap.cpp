// Schemas of the QuadLinear-AP family (paper eqs. 9-11). Kernels live in csrc/cpu and csrc/cuda;
// fake kernels and autograd are registered from Python (hapvr/ops/quadlinear_ap.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(hapvr, m) {
  // scores [Q, M] float, labels [Q, M] int8 (1 positive, 0 negative, -1 ignored), delta > 0,
  // rho >= 0. Returns the per-query risk [Q] (dtype of scores; 0 for an invalid query) and the
  // validity mask [Q] bool (the query has at least one positive and one negative).
  m.def("quadlinear_ap(Tensor scores, Tensor labels, float delta, float rho) -> (Tensor, Tensor)");
  // d sum_q grad_risk[q] * risk[q] / d scores, [Q, M]; den of eq. 11 is held constant.
  m.def(
      "quadlinear_ap_backward(Tensor grad_risk, Tensor scores, Tensor labels, float delta, "
      "float rho) -> Tensor");
}
