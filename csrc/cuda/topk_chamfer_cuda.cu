// CUDA kernels of spatial_topk_chamfer (paper eq. 3).
//
// Straightforward kernels whose per-element logic (top-k selection and its tie rule, mask bits,
// frame validity) is the shared host/device code in common/topk.h, exercised by the CPU tests.
// No GPU is available to this project, so these kernels are compiled in CI but not tuned; the
// Triton backend (tl.dot tiles) is preferred on GPUs by backend="auto".
//   forward: one thread per (a, b, x, y) output entry, fp32 (fp64 for double) accumulation.
//   backward: one thread per (a, x, i, d) of dq and one per (b, y, j, d) of dt; neighbouring
//   threads take neighbouring d, so feature reads are coalesced.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/topk.h"
#include "common/topk_chamfer_checks.h"

namespace hapvr {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(b, 1), 65535 * 32));
}

template <typename scalar_t, typename mask_t>
__global__ void forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ t,
                               const int64_t* __restrict__ qlen, const int64_t* __restrict__ tlen,
                               scalar_t* __restrict__ out, mask_t* __restrict__ mask, int64_t Bq,
                               int64_t Bt, int64_t T, int64_t T2, int64_t R, int64_t D,
                               int64_t k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = Bq * Bt * T * T2;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n;
       o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t y = o % T2, x = (o / T2) % T, b = (o / (T2 * T)) % Bt, a = o / (T2 * T * Bt);
    if (!frame_valid(x, qlen[a]) || !frame_valid(y, tlen[b])) continue;
    acc_t vals[kMaxRegions];
    acc_t total = 0;
    for (int64_t i = 0; i < R; ++i) {
      const scalar_t* qi = q + ((a * T + x) * R + i) * D;
      for (int64_t j = 0; j < R; ++j) {
        const scalar_t* tj = t + ((b * T2 + y) * R + j) * D;
        acc_t dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<acc_t>(qi[d]) * static_cast<acc_t>(tj[d]);
        vals[j] = dot;
      }
      acc_t part;
      const uint64_t sel = topk_select<acc_t>(vals, 1, int(R), int(k), &part);
      if (mask != nullptr) mask[o * R + i] = store_selection<mask_t>(sel);
      total += part;
    }
    out[o] = static_cast<scalar_t>(total / static_cast<acc_t>(k * R));
  }
}

template <typename scalar_t, typename mask_t>
__global__ void grad_query_kernel(const scalar_t* __restrict__ grad, const mask_t* __restrict__ mask,
                                  const scalar_t* __restrict__ t, const int64_t* __restrict__ qlen,
                                  const int64_t* __restrict__ tlen, scalar_t* __restrict__ dq,
                                  int64_t Bq, int64_t Bt, int64_t T, int64_t T2, int64_t R,
                                  int64_t D, int64_t k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = Bq * T * R * D;
  const acc_t scale = acc_t(1) / static_cast<acc_t>(k * R);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, i = (e / D) % R, x = (e / (D * R)) % T, a = e / (D * R * T);
    acc_t acc = 0;
    if (frame_valid(x, qlen[a])) {
      for (int64_t b = 0; b < Bt; ++b) {
        for (int64_t y = 0; y < tlen[b]; ++y) {
          const int64_t o = ((a * Bt + b) * T + x) * T2 + y;
          const acc_t w = static_cast<acc_t>(grad[o]) * scale;
          const uint64_t m = load_mask(mask[o * R + i]);
          for (int64_t j = 0; j < R; ++j)
            if (mask_has(m, int(j))) acc += w * static_cast<acc_t>(t[((b * T2 + y) * R + j) * D + d]);
        }
      }
    }
    dq[e] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename mask_t>
__global__ void grad_target_kernel(const scalar_t* __restrict__ grad, const mask_t* __restrict__ mask,
                                   const scalar_t* __restrict__ q, const int64_t* __restrict__ qlen,
                                   const int64_t* __restrict__ tlen, scalar_t* __restrict__ dt,
                                   int64_t Bq, int64_t Bt, int64_t T, int64_t T2, int64_t R,
                                   int64_t D, int64_t k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = Bt * T2 * R * D;
  const acc_t scale = acc_t(1) / static_cast<acc_t>(k * R);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, j = (e / D) % R, y = (e / (D * R)) % T2, b = e / (D * R * T2);
    acc_t acc = 0;
    if (frame_valid(y, tlen[b])) {
      for (int64_t a = 0; a < Bq; ++a) {
        for (int64_t x = 0; x < qlen[a]; ++x) {
          const int64_t o = ((a * Bt + b) * T + x) * T2 + y;
          const acc_t w = static_cast<acc_t>(grad[o]) * scale;
          for (int64_t i = 0; i < R; ++i)
            if (mask_has(load_mask(mask[o * R + i]), int(j)))
              acc += w * static_cast<acc_t>(q[((a * T + x) * R + i) * D + d]);
        }
      }
    }
    dt[e] = static_cast<scalar_t>(acc);
  }
}

void check_cuda(const at::Tensor& query) {
  TORCH_CHECK(query.is_cuda(), "spatial_topk_chamfer (CUDA kernel): inputs must be CUDA tensors");
}

std::tuple<at::Tensor, at::Tensor> spatial_topk_chamfer_cuda(const at::Tensor& query,
                                                             const at::Tensor& target, int64_t k,
                                                             const at::Tensor& query_lengths,
                                                             const at::Tensor& target_lengths,
                                                             bool save_selection) {
  check_topk_chamfer_args(query, target, k, query_lengths, target_lengths);
  check_cuda(query);
  const c10::cuda::CUDAGuard guard(query.device());
  const int64_t Bq = query.size(0), T = query.size(1), R = query.size(2), D = query.size(3);
  const int64_t Bt = target.size(0), T2 = target.size(1);
  at::Tensor out = at::zeros({Bq, Bt, T, T2}, query.options());
  const auto mask_options = query.options().dtype(mask_dtype_for(R, k));
  at::Tensor mask = save_selection ? at::zeros({Bq, Bt, T, T2, R}, mask_options)
                                   : at::empty({0}, mask_options);
  if (out.numel() == 0) return {out, mask};
  const at::Tensor q = query.contiguous(), t = target.contiguous();
  const at::Tensor ql = query_lengths.contiguous(), tl = target_lengths.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "spatial_topk_chamfer_cuda", [&] {
    dispatch_mask(mask.scalar_type(), [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      forward_kernel<scalar_t, mask_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
          q.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), ql.data_ptr<int64_t>(),
          tl.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
          save_selection ? mask.data_ptr<mask_t>() : nullptr, Bq, Bt, T,
          T2, R, D, k);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, mask};
}

std::tuple<at::Tensor, at::Tensor> spatial_topk_chamfer_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& target,
    const at::Tensor& mask, int64_t k, const at::Tensor& query_lengths,
    const at::Tensor& target_lengths) {
  check_topk_chamfer_args(query, target, k, query_lengths, target_lengths);
  check_cuda(query);
  check_topk_chamfer_backward_args(grad_out, query, target, mask, k);
  const c10::cuda::CUDAGuard guard(query.device());
  const int64_t Bq = query.size(0), T = query.size(1), R = query.size(2), D = query.size(3);
  const int64_t Bt = target.size(0), T2 = target.size(1);
  at::Tensor dq = at::zeros_like(query, at::MemoryFormat::Contiguous);
  at::Tensor dt = at::zeros_like(target, at::MemoryFormat::Contiguous);
  if (grad_out.numel() == 0 || D == 0) return {dq, dt};
  const at::Tensor q = query.contiguous(), t = target.contiguous();
  const at::Tensor g = grad_out.to(query.scalar_type()).contiguous(), m = mask.contiguous();
  const at::Tensor ql = query_lengths.contiguous(), tl = target_lengths.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "spatial_topk_chamfer_backward_cuda", [&] {
    dispatch_mask(m.scalar_type(), [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      grad_query_kernel<scalar_t, mask_t><<<blocks_for(dq.numel()), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), m.data_ptr<mask_t>(), t.data_ptr<scalar_t>(),
          ql.data_ptr<int64_t>(), tl.data_ptr<int64_t>(), dq.data_ptr<scalar_t>(), Bq, Bt, T, T2,
          R, D, k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_target_kernel<scalar_t, mask_t><<<blocks_for(dt.numel()), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), m.data_ptr<mask_t>(), q.data_ptr<scalar_t>(),
          ql.data_ptr<int64_t>(), tl.data_ptr<int64_t>(), dt.data_ptr<scalar_t>(), Bq, Bt, T, T2,
          R, D, k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dq, dt};
}

}  // namespace

TORCH_LIBRARY_IMPL(hapvr, CUDA, m) {
  m.impl("spatial_topk_chamfer", &spatial_topk_chamfer_cuda);
  m.impl("spatial_topk_chamfer_backward", &spatial_topk_chamfer_backward_cuda);
}

}  // namespace hapvr
