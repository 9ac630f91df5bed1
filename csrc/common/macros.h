// Shared portability macros: every per-element helper is compiled for the host (the tested CPU
// path) and, under nvcc, for the device, so the CUDA kernels run the same logic.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HAPVR_HD __host__ __device__ __forceinline__
#else
#define HAPVR_HD inline
#endif
