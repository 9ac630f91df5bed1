// Argument checks shared by the CPU and CUDA kernels of spatial_topk_chamfer. The Python
// wrapper validates user input first with friendlier messages; these guard direct op calls.
#pragma once

#include <ATen/ATen.h>

#include "common/topk.h"

namespace hapvr {

// Storage of the saved selection (see store_selection in common/topk.h).
inline at::ScalarType mask_dtype_for(int64_t R, int64_t k) {
  if (k == 1) return at::kChar;
  if (R <= 16) return at::kShort;
  if (R <= 32) return at::kInt;
  return at::kLong;
}

// Calls f with a value of the C++ type of the mask dtype.
template <typename F>
void dispatch_mask(at::ScalarType mask_type, F&& f) {
  switch (mask_type) {
    case at::kChar: f(int8_t{}); break;
    case at::kShort: f(int16_t{}); break;
    case at::kInt: f(int32_t{}); break;
    case at::kLong: f(int64_t{}); break;
    default: TORCH_INTERNAL_ASSERT(false, "unexpected mask dtype ", mask_type);
  }
}

inline void check_topk_chamfer_args(const at::Tensor& query, const at::Tensor& target, int64_t k,
                                    const at::Tensor& query_lengths,
                                    const at::Tensor& target_lengths) {
  TORCH_CHECK(query.dim() == 4, "spatial_topk_chamfer: query must be [Bq, T, R, D], got ",
              query.sizes());
  TORCH_CHECK(target.dim() == 4, "spatial_topk_chamfer: target must be [Bt, T', R, D], got ",
              target.sizes());
  TORCH_CHECK(query.size(2) == target.size(2) && query.size(3) == target.size(3),
              "spatial_topk_chamfer: query and target must share R and D, got ", query.sizes(),
              " and ", target.sizes());
  const int64_t R = query.size(2);
  TORCH_CHECK(R >= 1 && R <= kMaxRegions, "spatial_topk_chamfer: R must be in [1, ", kMaxRegions,
              "], got ", R);
  TORCH_CHECK(k >= 1 && k <= R, "spatial_topk_chamfer: k must be in [1, R=", R, "], got ", k);
  TORCH_CHECK(query.scalar_type() == target.scalar_type(),
              "spatial_topk_chamfer: query and target must share a dtype");
  TORCH_CHECK(query.device() == target.device(),
              "spatial_topk_chamfer: query and target must be on the same device");
  TORCH_CHECK(query_lengths.scalar_type() == at::kLong && target_lengths.scalar_type() == at::kLong,
              "spatial_topk_chamfer: lengths must be int64");
  TORCH_CHECK(query_lengths.dim() == 1 && query_lengths.size(0) == query.size(0),
              "spatial_topk_chamfer: query_lengths must be [Bq]");
  TORCH_CHECK(target_lengths.dim() == 1 && target_lengths.size(0) == target.size(0),
              "spatial_topk_chamfer: target_lengths must be [Bt]");
  TORCH_CHECK(query_lengths.device() == query.device() &&
                  target_lengths.device() == query.device(),
              "spatial_topk_chamfer: lengths must be on the device of query");
}

// Checks of the extra inputs of spatial_topk_chamfer_backward (after check_topk_chamfer_args).
inline void check_topk_chamfer_backward_args(const at::Tensor& grad_out, const at::Tensor& query,
                                             const at::Tensor& target, const at::Tensor& mask,
                                             int64_t k) {
  const int64_t Bq = query.size(0), T = query.size(1), R = query.size(2);
  const int64_t Bt = target.size(0), T2 = target.size(1);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({Bq, Bt, T, T2}),
              "spatial_topk_chamfer_backward: grad_out must be [Bq, Bt, T, T']");
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({Bq, Bt, T, T2, R}) &&
                  mask.scalar_type() == mask_dtype_for(R, k),
              "spatial_topk_chamfer_backward: mask does not match the forward's (was the forward "
              "run with save_selection=False?)");
}

}  // namespace hapvr
