// CPU kernels of quadlinear_ap (paper eq. 11) in O(M log M) per query.
//
// Queries are independent: at::parallel_for hands each worker a range of rows and one reusable
// workspace. Per row, the positive and negative scores are gathered and sorted (in double, the
// accumulation type of every backend of this op), prefix sums are built once, and each score's
// term or gradient is a couple of binary searches through the helpers of
// common/quadlinear_ap.h, the same code the CUDA kernel runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "common/quadlinear_ap.h"
#include "common/quadlinear_ap_checks.h"

namespace hapvr {
namespace {

// Rows per parallel task: about 32k candidates of work, so that small batches run inline
// instead of paying a thread wake-up that costs more than the rows themselves.
int64_t grain_rows(int64_t M) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(M, 1)); }

// Buffers of one worker, reused across its rows.
struct Workspace {
  std::vector<double> neg, p1, p2;                   // sorted negative scores, their moments
  std::vector<std::pair<double, int64_t>> pos;       // (score, column) of positives, sorted
  std::vector<double> pos_s, pos_w, pw, pws;         // sorted positive scores, weights, prefixes

  void reserve(int64_t M) {
    neg.reserve(M);
    p1.resize(M + 1);
    p2.resize(M + 1);
    pos.reserve(M);
    pos_s.reserve(M);
    pos_w.reserve(M);
    pw.resize(M + 1);
    pws.resize(M + 1);
  }
};

// Gathers and sorts one row; returns false if the row lacks a positive or a negative.
template <typename scalar_t>
bool prepare_row(const scalar_t* s, const int8_t* lab, int64_t M, Workspace& ws) {
  ws.neg.clear();
  ws.pos.clear();
  ws.pos_s.clear();
  for (int64_t m = 0; m < M; ++m) {
    if (lab[m] == 1) ws.pos.emplace_back(static_cast<double>(s[m]), m);
    else if (lab[m] == 0) ws.neg.push_back(static_cast<double>(s[m]));
  }
  if (ws.pos.empty() || ws.neg.empty()) return false;
  std::sort(ws.neg.begin(), ws.neg.end());
  std::sort(ws.pos.begin(), ws.pos.end());
  for (const auto& p : ws.pos) ws.pos_s.push_back(p.first);
  const int64_t nn = static_cast<int64_t>(ws.neg.size());
  qlap::build_moment_prefix(ws.neg.data(), nn, qlap::centre(ws.neg.data(), nn), ws.p1.data(),
                            ws.p2.data());
  return true;
}

template <typename scalar_t>
void forward_impl(const scalar_t* scores, const int8_t* labels, int64_t Q, int64_t M, double delta,
                  double rho, scalar_t* risk, bool* valid) {
  at::parallel_for(0, Q, grain_rows(M), [&](int64_t begin, int64_t end) {
    Workspace ws;
    ws.reserve(M);
    for (int64_t q = begin; q < end; ++q) {
      const bool ok = prepare_row(scores + q * M, labels + q * M, M, ws);
      valid[q] = ok;
      if (!ok) {
        risk[q] = scalar_t(0);
        continue;
      }
      const int64_t nn = static_cast<int64_t>(ws.neg.size());
      const int64_t np = static_cast<int64_t>(ws.pos_s.size());
      const double c = qlap::centre(ws.neg.data(), nn);
      double total = 0;
      for (int64_t k = 0; k < np; ++k) {
        const double s = ws.pos_s[k];
        double num, slope;
        qlap::positive_terms(s, delta, ws.neg.data(), ws.p1.data(), ws.p2.data(), nn, c, &num,
                             &slope);
        const double den = qlap::positive_denominator(s, rho, ws.pos_s.data(), np);
        total += qlap::positive_ratio(num, den);
      }
      risk[q] = static_cast<scalar_t>(total / static_cast<double>(np));
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* grad_risk, const scalar_t* scores, const int8_t* labels,
                   int64_t Q, int64_t M, double delta, double rho, scalar_t* grad) {
  at::parallel_for(0, Q, grain_rows(M), [&](int64_t begin, int64_t end) {
    Workspace ws;
    ws.reserve(M);
    for (int64_t q = begin; q < end; ++q) {
      const scalar_t* s_row = scores + q * M;
      const int8_t* l_row = labels + q * M;
      scalar_t* g_row = grad + q * M;
      std::fill(g_row, g_row + M, scalar_t(0));
      const double go = static_cast<double>(grad_risk[q]);
      if (go == 0.0 || !prepare_row(s_row, l_row, M, ws)) continue;
      const int64_t nn = static_cast<int64_t>(ws.neg.size());
      const int64_t np = static_cast<int64_t>(ws.pos_s.size());
      const double c_neg = qlap::centre(ws.neg.data(), nn);
      const double scale = go / static_cast<double>(np);
      // Positives: d risk / d s_i = -w_i * slope_i (only the numerator depends on s_i).
      ws.pos_w.resize(np);
      for (int64_t k = 0; k < np; ++k) {
        const double s = ws.pos_s[k];
        double num, slope;
        qlap::positive_terms(s, delta, ws.neg.data(), ws.p1.data(), ws.p2.data(), nn, c_neg, &num,
                             &slope);
        const double den = qlap::positive_denominator(s, rho, ws.pos_s.data(), np);
        const double w = qlap::positive_weight(num, den, scale);
        ws.pos_w[k] = w;
        g_row[ws.pos[k].second] = static_cast<scalar_t>(-w * slope);
      }
      // Negatives: d risk / d s_j = sum_i w_i R-'(s_j - s_i), a window of the sorted positives.
      const double c_pos = qlap::centre(ws.pos_s.data(), np);
      qlap::build_weight_prefix(ws.pos_s.data(), ws.pos_w.data(), np, c_pos, ws.pw.data(),
                                ws.pws.data());
      for (int64_t m = 0; m < M; ++m) {
        if (l_row[m] != 0) continue;
        g_row[m] = static_cast<scalar_t>(qlap::negative_gradient(
            static_cast<double>(s_row[m]), delta, ws.pos_s.data(), ws.pw.data(), ws.pws.data(), np,
            c_pos));
      }
    }
  });
}

void check_cpu(const at::Tensor& scores) {
  TORCH_CHECK(scores.device().is_cpu(), "quadlinear_ap (CPU kernel): scores must be on CPU");
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
              "quadlinear_ap (CPU kernel): dtype must be float32 or float64, got ",
              scores.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> quadlinear_ap_cpu(const at::Tensor& scores,
                                                     const at::Tensor& labels, double delta,
                                                     double rho) {
  check_quadlinear_ap_args(scores, labels, delta, rho);
  check_cpu(scores);
  const int64_t Q = scores.size(0), M = scores.size(1);
  at::Tensor risk = at::zeros({Q}, scores.options());
  at::Tensor valid = at::zeros({Q}, scores.options().dtype(at::kBool));
  if (Q == 0) return {risk, valid};
  const at::Tensor s = scores.detach().contiguous();
  const at::Tensor l = labels.contiguous();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "quadlinear_ap_cpu", [&] {
    forward_impl<scalar_t>(s.data_ptr<scalar_t>(), l.data_ptr<int8_t>(), Q, M, delta, rho,
                           risk.data_ptr<scalar_t>(), valid.data_ptr<bool>());
  });
  return {risk, valid};
}

at::Tensor quadlinear_ap_backward_cpu(const at::Tensor& grad_risk, const at::Tensor& scores,
                                      const at::Tensor& labels, double delta, double rho) {
  check_quadlinear_ap_args(scores, labels, delta, rho);
  check_quadlinear_ap_grad(grad_risk, scores);
  check_cpu(scores);
  const int64_t Q = scores.size(0), M = scores.size(1);
  at::Tensor grad = at::zeros({Q, M}, scores.options());
  if (grad.numel() == 0) return grad;
  const at::Tensor s = scores.detach().contiguous();
  const at::Tensor l = labels.contiguous();
  const at::Tensor go = grad_risk.detach().to(scores.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "quadlinear_ap_backward_cpu", [&] {
    backward_impl<scalar_t>(go.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), l.data_ptr<int8_t>(),
                            Q, M, delta, rho, grad.data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(hapvr, CPU, m) {
  m.impl("quadlinear_ap", &quadlinear_ap_cpu);
  m.impl("quadlinear_ap_backward", &quadlinear_ap_backward_cpu);
}

}  // namespace hapvr
