// What the CPU kernels of the igcam_fast ops share (schemas: csrc/igcam_ops.cpp, truth:
// igcam_fast/core/reference.py). One op per file (path_images.cpp, combine.cpp, upsample.cpp), so
// that they compile in parallel.
//
// Parallel with at::parallel_for (the extension is built with -fopenmp), inner loops written over
// unit-stride runs so the compiler vectorises them; reductions keep LANES independent partial
// sums so they vectorise without -ffast-math. Accumulation is in float (double for double input).
#pragma once

// Tensor methods only (no at:: operator functions): a much lighter include than ATen.h.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "igcam_checks.h"

namespace igcam_fast {
namespace cpu {

// Σ_{i<n} f(i) with independent lanes (vectorisable without reassociation flags).
template <typename acc_t, typename F>
inline acc_t lane_sum(int64_t n, const F& f) {
  constexpr int L = 32 / sizeof(acc_t) * 2;
  acc_t lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) lanes[l] += f(i + l);
  }
  acc_t tail = 0;
  for (; i < n; ++i) tail += f(i);
  for (int width = L / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0] + tail;
}

}  // namespace cpu
}  // namespace igcam_fast
