// Schemas of the TopK-Chamfer family (paper eqs. 3 and 5). Kernels live in csrc/cpu and
// csrc/cuda; fake kernels and autograd are registered from Python (hapvr/ops/_spatial_autograd.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(hapvr, m) {
  // query [Bq, T, R, D], target [Bt, T', R, D], lengths int64 [Bq] / [Bt] on the same device.
  // Returns the frame-similarity maps [Bq, Bt, T, T'] and the top-k selection mask
  // [Bq, Bt, T, T', R]: for k = 1 (int8) the index of the selected target region; for k > 1 a
  // bit mask (bit j set <=> target region j is among the top-k of query region i), int16 for
  // R <= 16, int32 for R <= 32, int64 for R <= 64. With save_selection=False (inference) the
  // selection is not kept and the second output is empty.
  m.def(
      "spatial_topk_chamfer(Tensor query, Tensor target, int k, Tensor query_lengths, "
      "Tensor target_lengths, bool save_selection=True) -> (Tensor, Tensor)");
  m.def(
      "spatial_topk_chamfer_backward(Tensor grad_out, Tensor query, Tensor target, Tensor mask, "
      "int k, Tensor query_lengths, Tensor target_lengths) -> (Tensor, Tensor)");
}
