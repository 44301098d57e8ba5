// Argument checks shared by the CPU and CUDA kernels of the igcam_fast ops.
//
// The Python wrappers in igcam_fast/ops/__init__.py check the same things with friendlier
// messages; these checks protect direct callers of torch.ops.igcam_fast.* from reading or
// writing out of bounds. Every message names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace igcam_fast {

// Kernels accumulate in float, or in double for double inputs.
template <typename T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename T>
using acc_type = typename AccumulateType<T>::type;

// Error messages are assembled here, without std::ostream: c10::str formats numbers through
// ostream code that GCC >= 13 inlines into this library, and that inlined code crashes when the
// process runs an older libstdc++ (seen: g++ 13 build, torch 2.11 venv). A single std::string
// argument goes through TORCH_CHECK untouched. Arguments are evaluated only when a check fails.
namespace detail {
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, int64_t v) { s += std::to_string(v); }
inline void append(std::string& s, int v) { s += std::to_string(v); }
inline void append(std::string& s, at::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += "]";
}
inline void append(std::string& s, at::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const at::Device& v) { s += v.str(); }
}  // namespace detail

template <typename... Args>
std::string check_message(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

#define IGCAM_CHECK(cond, ...) TORCH_CHECK(cond, ::igcam_fast::check_message(__VA_ARGS__))

inline bool is_float_type(const at::Tensor& t) {
  auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// Maps and reductions are accumulated (and returned) in float32, or float64 for float64 input.
inline at::ScalarType accumulation_type(at::ScalarType s) {
  return s == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_float(const at::Tensor& t, const char* name, int64_t dim_a, int64_t dim_b = -1) {
  IGCAM_CHECK(is_float_type(t), name, " must be a float16, bfloat16, float32 or float64 tensor, got ",
              t.scalar_type());
  IGCAM_CHECK(t.dim() == dim_a || t.dim() == dim_b, name, " must have ", dim_a,
              (dim_b >= 0 ? " or " + std::to_string(dim_b) : std::string()), " dimensions, got shape ",
              t.sizes());
}

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  IGCAM_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but the other inputs are on ",
              ref.device());
}

struct PathImagesDims {
  int64_t B, C, H, W, m;
};

inline PathImagesDims check_path_images_args(const at::Tensor& x, const at::Tensor& baseline,
                                             const at::Tensor& alphas,
                                             const std::optional<at::Tensor>& mean,
                                             const std::optional<at::Tensor>& std,
                                             const at::Tensor& out) {
  check_float(x, "x", 4);
  check_float(baseline, "baseline", 3, 4);
  check_float(alphas, "alphas", 1);
  check_float(out, "out", 4);
  PathImagesDims d{x.size(0), x.size(1), x.size(2), x.size(3), alphas.size(0)};
  IGCAM_CHECK(baseline.size(-3) == d.C && baseline.size(-2) == d.H && baseline.size(-1) == d.W &&
                  (baseline.dim() == 3 || baseline.size(0) == d.B),
              "baseline must have shape (C, H, W) or (B, C, H, W) matching x ", x.sizes(), ", got ",
              baseline.sizes());
  IGCAM_CHECK(mean.has_value() == std.has_value(), "mean and std must be given together (or neither)");
  if (mean.has_value()) {
    check_float(*mean, "mean", 1);
    check_float(*std, "std", 1);
    IGCAM_CHECK(mean->numel() == d.C, "mean must have ", d.C, " elements (one per channel), got ",
                mean->numel());
    IGCAM_CHECK(std->numel() == d.C, "std must have ", d.C, " elements (one per channel), got ",
                std->numel());
    check_same_device(x, *mean, "mean");
    check_same_device(x, *std, "std");
  }
  IGCAM_CHECK(out.size(0) == d.B * d.m && out.size(1) == d.C && out.size(2) == d.H && out.size(3) == d.W,
              "out must have shape (B·m, C, H, W) = (", d.B * d.m, ", ", d.C, ", ", d.H, ", ", d.W,
              "), got ", out.sizes());
  check_same_device(x, baseline, "baseline");
  check_same_device(x, alphas, "alphas");
  check_same_device(x, out, "out");
  return d;
}

struct CombineDims {
  int64_t N, K, h, w, m, B;
};

inline CombineDims check_combine_args(const at::Tensor& activations, const std::optional<at::Tensor>& gradients,
                                      const std::optional<at::Tensor>& channel_weights,
                                      const std::optional<at::Tensor>& baseline_features,
                                      const at::Tensor& step_weights, int64_t weight_mode,
                                      const at::Tensor& out) {
  check_float(activations, "activations", 4);
  CombineDims d{activations.size(0), activations.size(1), activations.size(2), activations.size(3), 0, 0};
  IGCAM_CHECK(gradients.has_value() != channel_weights.has_value(),
              "give exactly one of gradients and channel_weights");
  IGCAM_CHECK(weight_mode == 0 || weight_mode == 1, "weight_mode must be 0 (Grad-CAM) or 1 (Grad-CAM++), got ",
              weight_mode);
  if (gradients.has_value()) {
    check_float(*gradients, "gradients", 4);
    IGCAM_CHECK(gradients->sizes() == activations.sizes(), "gradients must have the shape of activations ",
                activations.sizes(), ", got ", gradients->sizes());
    IGCAM_CHECK(gradients->scalar_type() == activations.scalar_type(),
                "gradients must have the dtype of activations (", activations.scalar_type(), "), got ",
                gradients->scalar_type());
    check_same_device(activations, *gradients, "gradients");
  } else {
    check_float(*channel_weights, "channel_weights", 2);
    IGCAM_CHECK(channel_weights->size(0) == d.N && channel_weights->size(1) == d.K,
                "channel_weights must have shape (N, K) = (", d.N, ", ", d.K, "), got ", channel_weights->sizes());
    IGCAM_CHECK(weight_mode == 0, "weight_mode 1 (Grad-CAM++) needs gradients, not channel_weights");
    check_same_device(activations, *channel_weights, "channel_weights");
  }
  check_float(step_weights, "step_weights", 1);
  check_same_device(activations, step_weights, "step_weights");
  d.m = step_weights.size(0);
  IGCAM_CHECK(d.m > 0 && d.N % d.m == 0, "the number of rows of activations (", d.N,
              ") must be a multiple of len(step_weights) (", d.m, ")");
  d.B = d.N / d.m;
  if (baseline_features.has_value()) {
    const auto& bf = *baseline_features;
    check_float(bf, "baseline_features", 3, 4);
    IGCAM_CHECK(bf.size(-3) == d.K && bf.size(-2) == d.h && bf.size(-1) == d.w && (bf.dim() == 3 || bf.size(0) == d.B),
                "baseline_features must have shape (K, h, w) or (B, K, h, w) = (", d.B, ", ", d.K, ", ", d.h,
                ", ", d.w, "), got ", bf.sizes());
    IGCAM_CHECK(bf.scalar_type() == activations.scalar_type(),
                "baseline_features must have the dtype of activations (", activations.scalar_type(), "), got ",
                bf.scalar_type());
    check_same_device(activations, bf, "baseline_features");
  }
  IGCAM_CHECK(out.dim() == 3 && out.size(0) == d.B && out.size(1) == d.h && out.size(2) == d.w,
              "out must have shape (B, h, w) = (", d.B, ", ", d.h, ", ", d.w, "), got ", out.sizes());
  IGCAM_CHECK(out.scalar_type() == accumulation_type(activations.scalar_type()), "out must be ",
              accumulation_type(activations.scalar_type()), " for ", activations.scalar_type(),
              " activations, got ", out.scalar_type());
  check_same_device(activations, out, "out");
  return d;
}

inline void check_upsample_args(const at::Tensor& maps, const at::Tensor& out) {
  check_float(maps, "maps", 3);
  IGCAM_CHECK(maps.size(1) >= 1 && maps.size(2) >= 1, "maps must have a non-empty spatial extent, got shape ",
              maps.sizes());
  IGCAM_CHECK(out.dim() == 3 && out.size(0) == maps.size(0), "out must have shape (B, H, W) with B = ",
              maps.size(0), ", got ", out.sizes());
  IGCAM_CHECK(out.scalar_type() == accumulation_type(maps.scalar_type()), "out must be ",
              accumulation_type(maps.scalar_type()), " for ", maps.scalar_type(), " maps, got ",
              out.scalar_type());
  check_same_device(maps, out, "out");
}

// The flattened spatial stride of a (N, K, h, w) tensor: offset(i, j) = (i·w + j)·sp, or -1 when
// the two spatial dimensions cannot be walked as one.
inline int64_t flat_spatial_stride(const at::Tensor& t) {
  int64_t h = t.size(-2), w = t.size(-1);
  int64_t sh = t.stride(-2), sw = t.stride(-1);
  int64_t sp = w > 1 ? sw : (h > 1 ? sh : 1);
  if ((w == 1 || sw == sp) && (h == 1 || sh == w * sp)) return sp;
  return -1;
}

// How a (N, K, h, w) tensor lies in memory, for the combine kernels.
enum class Layout : int { SpatialInner = 0, ChannelInner = 1, Strided = 2 };

inline Layout classify_layout(const at::Tensor& t) {
  int64_t sp = flat_spatial_stride(t);
  if (sp >= 0 && (t.stride(-3) == 1 || t.size(-3) == 1)) return Layout::ChannelInner;  // channels_last
  if (sp == 1) return Layout::SpatialInner;  // contiguous
  return Layout::Strided;
}

}  // namespace igcam_fast
