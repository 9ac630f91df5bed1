// CPU kernels of spatial_topk_chamfer (paper eq. 3).
//
// The cost floor is the product of every query region with every target region. Frames of all
// videos are flattened into one row space per side and cut into tiles of roughly 256 x 512
// region rows; each tile's similarities come from one BLAS GEMM into a per-thread buffer that
// stays in cache and is reduced to top-k at once. The [Bq, Bt, T, R, R, T'] tensor never exists.
// The backward is GEMM-shaped too: each tile's sparse weights (the saved top-k mask times the
// output gradient) are expanded to a dense tile and multiplied with the features.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "common/topk.h"
#include "common/topk_chamfer_checks.h"

namespace hapvr {
namespace {

// Target region rows per tile side. 256 x 512 fp32 = 512 KiB: the tile fits in L2.
constexpr int64_t kTileQueryRows = 256;
constexpr int64_t kTileTargetRows = 512;

struct Geometry {
  int64_t Bq, T, Bt, T2, R, D;
  int64_t fx, fy;  // frames per tile on each side
  int64_t tiles_x() const { return (Bq * T + fx - 1) / fx; }
  int64_t tiles_y() const { return (Bt * T2 + fy - 1) / fy; }
};

Geometry make_geometry(const at::Tensor& query, const at::Tensor& target) {
  Geometry g;
  g.Bq = query.size(0);
  g.T = query.size(1);
  g.Bt = target.size(0);
  g.T2 = target.size(1);
  g.R = query.size(2);
  g.D = query.size(3);
  g.fx = std::max<int64_t>(1, kTileQueryRows / g.R);
  g.fy = std::max<int64_t>(1, kTileTargetRows / g.R);
  return g;
}

// True if a frame in the flattened range [g0, g1) lies within its video (frames_per_video each).
bool any_valid(int64_t g0, int64_t g1, int64_t frames_per_video, const int64_t* lengths) {
  for (int64_t gf = g0; gf < g1; ++gf)
    if (frame_valid(gf % frames_per_video, lengths[gf / frames_per_video])) return true;
  return false;
}

template <typename scalar_t, typename mask_t>
void forward_impl(const Geometry& g, int64_t k, const at::Tensor& q2, const at::Tensor& t2,
                  const int64_t* qlen, const int64_t* tlen, scalar_t* out, mask_t* mask) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t R = g.R;
  const int64_t ntx = g.tiles_x(), nty = g.tiles_y(), ntasks = ntx * nty;
  const acc_t scale = acc_t(1) / static_cast<acc_t>(k * R);
  // at::parallel_for runs on torch's OpenMP pool (torch.set_num_threads rules it), carries the
  // dispatcher's thread-local state into the workers and rethrows their errors in this thread.
  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain BLAS calls in the workers
    at::Tensor buffer = at::empty({g.fx * R * g.fy * R}, q2.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t gx0 = (task / nty) * g.fx, gx1 = std::min(gx0 + g.fx, g.Bq * g.T);
      const int64_t gy0 = (task % nty) * g.fy, gy1 = std::min(gy0 + g.fy, g.Bt * g.T2);
      const int64_t nrows = (gx1 - gx0) * R, ncols = (gy1 - gy0) * R;
      // Padded batches (length-bucketed evaluation) leave tiles with no valid frame: skip them.
      if (!any_valid(gx0, gx1, g.T, qlen) || !any_valid(gy0, gy1, g.T2, tlen)) continue;
      at::Tensor S = buffer.narrow(0, 0, nrows * ncols).view({nrows, ncols});
      at::mm_out(S, q2.narrow(0, gx0 * R, nrows), t2.narrow(0, gy0 * R, ncols).t());
      const scalar_t* s = S.data_ptr<scalar_t>();
      for (int64_t gx = gx0; gx < gx1; ++gx) {
        const int64_t a = gx / g.T, x = gx % g.T;
        if (!frame_valid(x, qlen[a])) continue;
        for (int64_t gy = gy0; gy < gy1; ++gy) {
          const int64_t b = gy / g.T2, y = gy % g.T2;
          if (!frame_valid(y, tlen[b])) continue;
          const int64_t o = ((a * g.Bt + b) * g.T + x) * g.T2 + y;
          acc_t total = 0;
          for (int64_t i = 0; i < R; ++i) {
            const scalar_t* row = s + ((gx - gx0) * R + i) * ncols + (gy - gy0) * R;
            acc_t part;
            const uint64_t sel = topk_select<acc_t>(row, 1, R, k, &part);
            if (mask != nullptr) mask[o * R + i] = store_selection<mask_t>(sel);
            total += part;
          }
          out[o] = static_cast<scalar_t>(total * scale);
        }
      }
    }
  });
}

// Expands the tile's sparse backward weights into the dense [nrows, ncols] buffer W:
// W[(x, i), (y, j)] = grad[a, b, x, y] / (k R) if region j was selected for (x, i, y).
// Returns false when the tile carries no gradient, so the caller can skip its GEMM.
template <typename scalar_t, typename mask_t>
bool fill_weights(const Geometry& g, int64_t k, int64_t gx0, int64_t gx1, int64_t gy0,
                  int64_t gy1, const scalar_t* grad, const mask_t* mask, const int64_t* qlen,
                  const int64_t* tlen, scalar_t* W) {
  const int64_t R = g.R, ncols = (gy1 - gy0) * R;
  const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(k * R);
  std::fill(W, W + (gx1 - gx0) * R * ncols, scalar_t(0));
  bool any = false;
  for (int64_t gx = gx0; gx < gx1; ++gx) {
    const int64_t a = gx / g.T, x = gx % g.T;
    if (!frame_valid(x, qlen[a])) continue;
    for (int64_t gy = gy0; gy < gy1; ++gy) {
      const int64_t b = gy / g.T2, y = gy % g.T2;
      if (!frame_valid(y, tlen[b])) continue;
      const int64_t o = ((a * g.Bt + b) * g.T + x) * g.T2 + y;
      const scalar_t w = grad[o] * scale;
      if (w == scalar_t(0)) continue;
      any = true;
      for (int64_t i = 0; i < R; ++i) {
        const uint64_t m = load_mask(mask[o * R + i]);
        scalar_t* wrow = W + ((gx - gx0) * R + i) * ncols + (gy - gy0) * R;
        for (int64_t j = 0; j < R; ++j)
          if (mask_has(m, static_cast<int>(j))) wrow[j] = w;
      }
    }
  }
  return any;
}

template <typename scalar_t, typename mask_t>
void backward_impl(const Geometry& g, int64_t k, const scalar_t* grad, const mask_t* mask,
                   const at::Tensor& q2, const at::Tensor& t2, const int64_t* qlen,
                   const int64_t* tlen, at::Tensor& dq2, at::Tensor& dt2) {
  const int64_t R = g.R, ntx = g.tiles_x(), nty = g.tiles_y();
  const int64_t nq = g.Bq * g.T, nt = g.Bt * g.T2;
  // Pass 1: each thread owns a band of query rows of dq and sweeps all target tiles.
  // Pass 2: each thread owns a band of target rows of dt and sweeps all query tiles.
  // Owning the output band avoids atomics and keeps the sums deterministic.
  for (int pass = 0; pass < 2; ++pass) {
    const int64_t nouter = pass == 0 ? ntx : nty, ninner = pass == 0 ? nty : ntx;
    at::parallel_for(0, nouter, 1, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor buffer = at::empty({g.fx * R * g.fy * R}, q2.options());
      for (int64_t outer = begin; outer < end; ++outer) {
        for (int64_t inner = 0; inner < ninner; ++inner) {
          const int64_t tx = pass == 0 ? outer : inner, ty = pass == 0 ? inner : outer;
          const int64_t gx0 = tx * g.fx, gx1 = std::min(gx0 + g.fx, nq);
          const int64_t gy0 = ty * g.fy, gy1 = std::min(gy0 + g.fy, nt);
          const int64_t nrows = (gx1 - gx0) * R, ncols = (gy1 - gy0) * R;
          at::Tensor W = buffer.narrow(0, 0, nrows * ncols).view({nrows, ncols});
          if (!fill_weights(g, k, gx0, gx1, gy0, gy1, grad, mask, qlen, tlen,
                            W.data_ptr<scalar_t>()))
            continue;
          if (pass == 0) {
            at::Tensor dst = dq2.narrow(0, gx0 * R, nrows);
            dst.addmm_(W, t2.narrow(0, gy0 * R, ncols));
          } else {
            at::Tensor dst = dt2.narrow(0, gy0 * R, ncols);
            dst.addmm_(W.t(), q2.narrow(0, gx0 * R, nrows));
          }
        }
      }
    });
  }
}

void check_cpu(const at::Tensor& query, const at::Tensor& target) {
  TORCH_CHECK(query.device().is_cpu(), "spatial_topk_chamfer (CPU kernel): query must be on CPU");
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "spatial_topk_chamfer (CPU kernel): dtype must be float32 or float64, got ",
              query.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> spatial_topk_chamfer_cpu(const at::Tensor& query,
                                                            const at::Tensor& target, int64_t k,
                                                            const at::Tensor& query_lengths,
                                                            const at::Tensor& target_lengths,
                                                            bool save_selection) {
  check_topk_chamfer_args(query, target, k, query_lengths, target_lengths);
  check_cpu(query, target);
  const Geometry g = make_geometry(query, target);
  at::Tensor out = at::zeros({g.Bq, g.Bt, g.T, g.T2}, query.options());
  const auto mask_options = query.options().dtype(mask_dtype_for(g.R, k));
  at::Tensor mask = save_selection ? at::zeros({g.Bq, g.Bt, g.T, g.T2, g.R}, mask_options)
                                   : at::empty({0}, mask_options);
  if (out.numel() == 0) return {out, mask};
  const at::Tensor q2 = query.detach().contiguous().view({g.Bq * g.T * g.R, g.D});
  const at::Tensor t2 = target.detach().contiguous().view({g.Bt * g.T2 * g.R, g.D});
  const at::Tensor ql = query_lengths.contiguous(), tl = target_lengths.contiguous();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "spatial_topk_chamfer_cpu", [&] {
    dispatch_mask(mask.scalar_type(), [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      forward_impl<scalar_t, mask_t>(g, k, q2, t2, ql.data_ptr<int64_t>(),
                                     tl.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                     save_selection ? mask.data_ptr<mask_t>() : nullptr);
    });
  });
  return {out, mask};
}

std::tuple<at::Tensor, at::Tensor> spatial_topk_chamfer_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& target,
    const at::Tensor& mask, int64_t k, const at::Tensor& query_lengths,
    const at::Tensor& target_lengths) {
  check_topk_chamfer_args(query, target, k, query_lengths, target_lengths);
  check_cpu(query, target);
  check_topk_chamfer_backward_args(grad_out, query, target, mask, k);
  const Geometry g = make_geometry(query, target);
  at::Tensor dq2 = at::zeros({g.Bq * g.T * g.R, g.D}, query.options());
  at::Tensor dt2 = at::zeros({g.Bt * g.T2 * g.R, g.D}, target.options());
  if (grad_out.numel() > 0 && g.D > 0) {
    const at::Tensor q2 = query.detach().contiguous().view({g.Bq * g.T * g.R, g.D});
    const at::Tensor t2 = target.detach().contiguous().view({g.Bt * g.T2 * g.R, g.D});
    const at::Tensor go = grad_out.to(query.scalar_type()).contiguous();
    const at::Tensor mk = mask.contiguous();
    const at::Tensor ql = query_lengths.contiguous(), tl = target_lengths.contiguous();
    AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "spatial_topk_chamfer_backward_cpu", [&] {
      dispatch_mask(mk.scalar_type(), [&](auto mask_tag) {
        using mask_t = decltype(mask_tag);
        backward_impl<scalar_t, mask_t>(g, k, go.data_ptr<scalar_t>(), mk.data_ptr<mask_t>(), q2,
                                        t2, ql.data_ptr<int64_t>(), tl.data_ptr<int64_t>(), dq2,
                                        dt2);
      });
    });
  }
  return {dq2.view(query.sizes()), dt2.view(target.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hapvr, CPU, m) {
  m.impl("spatial_topk_chamfer", &spatial_topk_chamfer_cpu);
  m.impl("spatial_topk_chamfer_backward", &spatial_topk_chamfer_backward_cpu);
}

}  // namespace hapvr
