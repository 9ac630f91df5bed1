// CUDA kernels of quadlinear_ap (paper eq. 11), O(M log M) per query like the CPU kernel.
//
// The positives and the negatives of every row are sorted by ATen's row-wise sort (non-members
// pushed to +inf, so each row's members come first); the centred prefix sums are built with a
// two-level scan (each thread sums one contiguous chunk of a row, the chunk totals are scanned
// across the block with warp shuffles, each thread then writes its chunk's prefixes; one block
// per row), and one thread per (query, candidate) evaluates its term or gradient with two binary
// searches. The prefix pass used to be one thread per query walking all M entries: at Q = 64,
// M = 4096 that is 64 busy threads on a GPU of 100+ SMs and a 4096-step dependent chain, ~0.2 ms,
// more than every other pass together (docs/gpu.md has the estimate); the block scan takes
// 2 x 16 steps per thread. Short rows (M <= 256, e.g. the frame-level lists of 28) keep one
// thread per row, which runs the CPU's own build_*_prefix. All per-element math (summands,
// chunk bounds, partial sums, prefix ranges) is in common/quadlinear_ap.h, shared with (and
// tested through) the CPU kernel, which runs the same chunks in order. Everything is
// accumulated in double, as on the CPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "common/quadlinear_ap.h"
#include "common/quadlinear_ap_checks.h"

namespace hapvr {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "quadlinear_ap (CUDA kernel): launch failed: ",
              cudaGetErrorString(err));
}

// Exclusive scan of one (a, b) pair per thread across the block: *ea / *eb receive the sums over
// the threads before this one. kBlock is a multiple of 32; every thread of the block must call it.
template <int kBlock>
__device__ void block_exclusive_scan2(double a, double b, double* ea, double* eb) {
  constexpr int kWarps = kBlock / 32;
  __shared__ double warp_a[kWarps], warp_b[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double ia = a, ib = b;  // inclusive scan within the warp
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const double ua = __shfl_up_sync(0xffffffffu, ia, off);
    const double ub = __shfl_up_sync(0xffffffffu, ib, off);
    if (lane >= off) {
      ia += ua;
      ib += ub;
    }
  }
  if (lane == 31) {
    warp_a[warp] = ia;
    warp_b[warp] = ib;
  }
  __syncthreads();
  double oa = 0, ob = 0;  // totals of the warps before this one
  for (int w = 0; w < warp; ++w) {
    oa += warp_a[w];
    ob += warp_b[w];
  }
  *ea = oa + (ia - a);
  *eb = ob + (ib - b);
}

// Prefix kernels. Long rows (M > kSerialMaxM): one block of kScanBlock threads per row, one
// chunk per thread, chunk totals scanned across the block. Short rows: one thread per row runs
// qlap::build_*_prefix, the CPU's code (same chunks, in order): at M = 28 (frame-level lists) a
// block per row would leave most of its threads idle and cap the rows in flight per SM.
constexpr int kScanBlock = static_cast<int>(qlap::kScanMaxParts);
constexpr int64_t kSerialMaxM = 256;
static_assert(kScanBlock % 32 == 0, "the block scan needs whole warps");

__global__ void moment_prefix_serial_kernel(const double* __restrict__ sorted,
                                            const int64_t* __restrict__ count, int64_t Q,
                                            int64_t M, double* __restrict__ centre,
                                            double* __restrict__ p1, double* __restrict__ p2) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= Q) return;
  const int64_t n = count[q];
  const double* a = sorted + q * M;
  const double c = n > 0 ? qlap::centre(a, n) : 0.0;
  centre[q] = c;
  qlap::build_moment_prefix(a, n, c, p1 + q * (M + 1), p2 + q * (M + 1));
}

__global__ void weight_prefix_serial_kernel(const double* __restrict__ sorted,
                                            const double* __restrict__ w,
                                            const int64_t* __restrict__ count, int64_t Q,
                                            int64_t M, double* __restrict__ centre,
                                            double* __restrict__ pw, double* __restrict__ pws) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= Q) return;
  const int64_t n = count[q];
  const double* a = sorted + q * M;
  const double c = n > 0 ? qlap::centre(a, n) : 0.0;
  centre[q] = c;
  qlap::build_weight_prefix(a, w + q * M, n, c, pw + q * (M + 1), pws + q * (M + 1));
}

// One block per row q; row q's sorted values occupy sorted[q * M .. q * M + count[q]); prefixes
// have M + 1 entries. Writes the row's centre and p1 / p2 (moments) of qlap::build_moment_prefix.
template <int kBlock>
__global__ void moment_prefix_block_kernel(const double* __restrict__ sorted,
                                           const int64_t* __restrict__ count, int64_t M,
                                           double* __restrict__ centre, double* __restrict__ p1,
                                           double* __restrict__ p2) {
  const int64_t q = blockIdx.x;
  const int64_t n = count[q];
  const double* a = sorted + q * M;
  double* r1 = p1 + q * (M + 1);
  double* r2 = p2 + q * (M + 1);
  const double c = n > 0 ? qlap::centre(a, n) : 0.0;
  const int64_t parts = qlap::scan_parts(n, kBlock);
  const int64_t part = threadIdx.x;
  int64_t begin = 0, end = 0;
  double s1 = 0, s2 = 0;
  if (part < parts) {
    qlap::scan_chunk(n, parts, part, &begin, &end);
    qlap::moment_partial(a, begin, end, c, &s1, &s2);
  }
  double o1, o2;
  block_exclusive_scan2<kBlock>(s1, s2, &o1, &o2);
  if (part < parts) qlap::moment_prefix_range(a, begin, end, c, o1, o2, r1, r2);
  if (part == 0) {
    centre[q] = c;
    r1[0] = 0;
    r2[0] = 0;
  }
}

// The same for the weight prefixes pw / pws of qlap::build_weight_prefix (w in sorted order).
template <int kBlock>
__global__ void weight_prefix_block_kernel(const double* __restrict__ sorted,
                                           const double* __restrict__ w,
                                           const int64_t* __restrict__ count, int64_t M,
                                           double* __restrict__ centre, double* __restrict__ pw,
                                           double* __restrict__ pws) {
  const int64_t q = blockIdx.x;
  const int64_t n = count[q];
  const double* a = sorted + q * M;
  const double* wq = w + q * M;
  double* r1 = pw + q * (M + 1);
  double* r2 = pws + q * (M + 1);
  const double c = n > 0 ? qlap::centre(a, n) : 0.0;
  const int64_t parts = qlap::scan_parts(n, kBlock);
  const int64_t part = threadIdx.x;
  int64_t begin = 0, end = 0;
  double s1 = 0, s2 = 0;
  if (part < parts) {
    qlap::scan_chunk(n, parts, part, &begin, &end);
    qlap::weight_partial(a, wq, begin, end, c, &s1, &s2);
  }
  double o1, o2;
  block_exclusive_scan2<kBlock>(s1, s2, &o1, &o2);
  if (part < parts) qlap::weight_prefix_range(a, wq, begin, end, c, o1, o2, r1, r2);
  if (part == 0) {
    centre[q] = c;
    r1[0] = 0;
    r2[0] = 0;
  }
}

void launch_moment_prefix(const double* sorted, const int64_t* count, int64_t Q, int64_t M,
                          double* centre, double* p1, double* p2, cudaStream_t stream) {
  if (M <= kSerialMaxM) {
    moment_prefix_serial_kernel<<<blocks_for(Q), kThreads, 0, stream>>>(sorted, count, Q, M,
                                                                        centre, p1, p2);
  } else {
    moment_prefix_block_kernel<kScanBlock><<<static_cast<unsigned int>(Q), kScanBlock, 0, stream>>>(
        sorted, count, M, centre, p1, p2);
  }
}

void launch_weight_prefix(const double* sorted, const double* w, const int64_t* count, int64_t Q,
                          int64_t M, double* centre, double* pw, double* pws,
                          cudaStream_t stream) {
  if (M <= kSerialMaxM) {
    weight_prefix_serial_kernel<<<blocks_for(Q), kThreads, 0, stream>>>(sorted, w, count, Q, M,
                                                                        centre, pw, pws);
  } else {
    weight_prefix_block_kernel<kScanBlock><<<static_cast<unsigned int>(Q), kScanBlock, 0, stream>>>(
        sorted, w, count, M, centre, pw, pws);
  }
}

// Per positive: ratio = h(num / den) and, when scale != nullptr, its weight w and gradient.
__global__ void positive_kernel(const double* s, const int8_t* lab, const double* neg,
                                const int64_t* n_neg, const double* neg_c, const double* p1,
                                const double* p2, const double* pos, const int64_t* n_pos,
                                int64_t Q, int64_t M, double delta, double rho,
                                const double* scale, double* ratio, double* w, double* grad) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= Q * M) return;
  const int64_t q = e / M;
  if (lab[e] != 1 || n_neg[q] == 0) return;
  const int64_t nn = n_neg[q];
  double num, slope;
  qlap::positive_terms(s[e], delta, neg + q * M, p1 + q * (M + 1), p2 + q * (M + 1), nn, neg_c[q],
                       &num, &slope);
  const double den = qlap::positive_denominator(s[e], rho, pos + q * M, n_pos[q]);
  if (scale == nullptr) {
    ratio[e] = qlap::positive_ratio(num, den);
  } else {
    const double wi = qlap::positive_weight(num, den, scale[q]);
    w[e] = wi;
    grad[e] = -wi * slope;
  }
}

__global__ void negative_kernel(const double* s, const int8_t* lab, const double* pos,
                                const int64_t* n_pos, const double* pos_c, const double* pw,
                                const double* pws, int64_t Q, int64_t M, double delta,
                                double* grad) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= Q * M) return;
  const int64_t q = e / M;
  if (lab[e] != 0 || n_pos[q] == 0) return;
  grad[e] = qlap::negative_gradient(s[e], delta, pos + q * M, pw + q * (M + 1),
                                    pws + q * (M + 1), n_pos[q], pos_c[q]);
}

// Sorted values of the members (labels == which) of every row, their count and the sort order.
struct SortedMembers {
  at::Tensor values, order, count;
};

SortedMembers sort_members(const at::Tensor& s, const at::Tensor& lab, int which) {
  const at::Tensor member = lab.eq(which);
  const at::Tensor keyed =
      at::where(member, s, at::full({}, std::numeric_limits<double>::infinity(), s.options()));
  auto sorted = keyed.sort(/*dim=*/1);
  return {std::get<0>(sorted).contiguous(), std::get<1>(sorted).contiguous(),
          member.sum(1).to(at::kLong).contiguous()};
}

struct Prepared {
  at::Tensor s, lab, neg_prefix1, neg_prefix2, neg_centre;
  SortedMembers neg, pos;
};

Prepared prepare(const at::Tensor& scores, const at::Tensor& labels) {
  Prepared p;
  p.s = scores.detach().to(at::kDouble).contiguous();
  p.lab = labels.contiguous();
  const int64_t Q = p.s.size(0), M = p.s.size(1);
  p.neg = sort_members(p.s, p.lab, 0);
  p.pos = sort_members(p.s, p.lab, 1);
  p.neg_prefix1 = at::zeros({Q, M + 1}, p.s.options());
  p.neg_prefix2 = at::zeros({Q, M + 1}, p.s.options());
  p.neg_centre = at::zeros({Q}, p.s.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  launch_moment_prefix(p.neg.values.data_ptr<double>(), p.neg.count.data_ptr<int64_t>(), Q, M,
                       p.neg_centre.data_ptr<double>(), p.neg_prefix1.data_ptr<double>(),
                       p.neg_prefix2.data_ptr<double>(), stream);
  check_launch();
  return p;
}

void check_cuda(const at::Tensor& scores) {
  TORCH_CHECK(scores.is_cuda(), "quadlinear_ap (CUDA kernel): scores must be on a CUDA device");
}

std::tuple<at::Tensor, at::Tensor> quadlinear_ap_cuda(const at::Tensor& scores,
                                                      const at::Tensor& labels, double delta,
                                                      double rho) {
  check_quadlinear_ap_args(scores, labels, delta, rho);
  check_cuda(scores);
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t Q = scores.size(0), M = scores.size(1);
  if (Q == 0 || M == 0) {
    return {at::zeros({Q}, scores.options()), at::zeros({Q}, scores.options().dtype(at::kBool))};
  }
  Prepared p = prepare(scores, labels);
  at::Tensor ratio = at::zeros({Q, M}, p.s.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  positive_kernel<<<blocks_for(Q * M), kThreads, 0, stream>>>(
      p.s.data_ptr<double>(), p.lab.data_ptr<int8_t>(), p.neg.values.data_ptr<double>(),
      p.neg.count.data_ptr<int64_t>(), p.neg_centre.data_ptr<double>(),
      p.neg_prefix1.data_ptr<double>(), p.neg_prefix2.data_ptr<double>(),
      p.pos.values.data_ptr<double>(), p.pos.count.data_ptr<int64_t>(), Q, M, delta, rho,
      nullptr, ratio.data_ptr<double>(), nullptr, nullptr);
  check_launch();
  const at::Tensor valid = p.pos.count.gt(0).logical_and(p.neg.count.gt(0));
  const at::Tensor risk = ratio.sum(1).div(p.pos.count.clamp_min(1).to(at::kDouble));
  return {at::where(valid, risk, at::zeros({}, risk.options())).to(scores.scalar_type()), valid};
}

at::Tensor quadlinear_ap_backward_cuda(const at::Tensor& grad_risk, const at::Tensor& scores,
                                       const at::Tensor& labels, double delta, double rho) {
  check_quadlinear_ap_args(scores, labels, delta, rho);
  check_quadlinear_ap_grad(grad_risk, scores);
  check_cuda(scores);
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t Q = scores.size(0), M = scores.size(1);
  if (Q == 0 || M == 0) return at::zeros({Q, M}, scores.options());
  Prepared p = prepare(scores, labels);
  const at::Tensor scale = grad_risk.detach().to(at::kDouble).div(
      p.pos.count.clamp_min(1).to(at::kDouble)).contiguous();
  at::Tensor w = at::zeros({Q, M}, p.s.options());
  at::Tensor grad = at::zeros({Q, M}, p.s.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  positive_kernel<<<blocks_for(Q * M), kThreads, 0, stream>>>(
      p.s.data_ptr<double>(), p.lab.data_ptr<int8_t>(), p.neg.values.data_ptr<double>(),
      p.neg.count.data_ptr<int64_t>(), p.neg_centre.data_ptr<double>(),
      p.neg_prefix1.data_ptr<double>(), p.neg_prefix2.data_ptr<double>(),
      p.pos.values.data_ptr<double>(), p.pos.count.data_ptr<int64_t>(), Q, M, delta, rho,
      scale.data_ptr<double>(), nullptr, w.data_ptr<double>(), grad.data_ptr<double>());
  check_launch();
  // Weights in the order of the sorted positives (entries past the count gather w = 0).
  const at::Tensor w_sorted = w.gather(1, p.pos.order).contiguous();
  at::Tensor pw = at::zeros({Q, M + 1}, p.s.options());
  at::Tensor pws = at::zeros({Q, M + 1}, p.s.options());
  at::Tensor pos_centre = at::zeros({Q}, p.s.options());
  launch_weight_prefix(p.pos.values.data_ptr<double>(), w_sorted.data_ptr<double>(),
                       p.pos.count.data_ptr<int64_t>(), Q, M, pos_centre.data_ptr<double>(),
                       pw.data_ptr<double>(), pws.data_ptr<double>(), stream);
  check_launch();
  negative_kernel<<<blocks_for(Q * M), kThreads, 0, stream>>>(
      p.s.data_ptr<double>(), p.lab.data_ptr<int8_t>(), p.pos.values.data_ptr<double>(),
      p.pos.count.data_ptr<int64_t>(), pos_centre.data_ptr<double>(), pw.data_ptr<double>(),
      pws.data_ptr<double>(), Q, M, delta, grad.data_ptr<double>());
  check_launch();
  return grad.to(scores.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(hapvr, CUDA, m) {
  m.impl("quadlinear_ap", &quadlinear_ap_cuda);
  m.impl("quadlinear_ap_backward", &quadlinear_ap_backward_cuda);
}

}  // namespace hapvr
