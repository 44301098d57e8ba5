// CUDA kernels of the igcam_fast ops (schemas: csrc/igcam_ops.cpp, truth: igcam_fast/reference.py).
//
// path_images  one thread per (image b, element of C·H·W in out's memory order), looping over a
//              chunk of path nodes t: x and the baseline are read once per chunk, every store is
//              coalesced in out's layout (contiguous or channels_last).
// combine      kernel 1, grid (channel chunk, row n): the block computes the weights of its
//              channels (Grad-CAM mean, Grad-CAM++ or given) into shared memory, then the partial
//              map Σ_{k in chunk} w_k (A_k − A'_k) over all h·w, into a small (N, chunks, h·w)
//              scratch. Kernel 2 sums the chunks, applies the ReLU and Σ_t ω_t per (b, ij). Fixed
//              summation orders, no atomics: deterministic. No (N, K, h, w) temporary is formed.
// upsample     one block per map: bilinear taps as upsample_bilinear2d, then (normalize) a block
//              min/max and a second pass over the block's own outputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "igcam_checks.h"

namespace igcam_fast {
namespace {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// ------------------------------------------------------------------------------------------
// path_images
// ------------------------------------------------------------------------------------------

// The (C, H, W) part of the tensors, reordered as out lies in memory (d0 outermost).
struct PathGeometry {
  int64_t d1, d2;               // sizes of the two inner dims (d0 implied by the element count)
  int64_t x[4], base[4], out[4];  // strides: batch/row, then the three dims in out's order
  int cdim;                     // which of the three is the channel
};

template <typename in_t, typename out_t, typename acc_t, bool NORMALIZE>
__global__ void path_images_kernel(const in_t* __restrict__ x, const in_t* __restrict__ base,
                                   const acc_t* __restrict__ alphas, const acc_t* __restrict__ mean,
                                   const acc_t* __restrict__ stdev, out_t* __restrict__ out, PathGeometry g,
                                   int64_t per_image, int64_t B, int64_t m, int64_t t_chunk, int64_t n_chunks) {
  for (int64_t by = blockIdx.y; by < B * n_chunks; by += gridDim.y) {
    const int64_t b = by / n_chunks;
    const int64_t t0 = (by % n_chunks) * t_chunk;
    const int64_t t1 = t0 + t_chunk < m ? t0 + t_chunk : m;
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < per_image;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i2 = e % g.d2, r = e / g.d2, i1 = r % g.d1, i0 = r / g.d1;
      const acc_t xv = static_cast<acc_t>(x[b * g.x[0] + i0 * g.x[1] + i1 * g.x[2] + i2 * g.x[3]]);
      const acc_t bv = static_cast<acc_t>(base[b * g.base[0] + i0 * g.base[1] + i1 * g.base[2] + i2 * g.base[3]]);
      acc_t mu = 0, sd = 1;
      if (NORMALIZE) {
        const int64_t c = g.cdim == 0 ? i0 : (g.cdim == 1 ? i1 : i2);
        mu = mean[c];
        sd = stdev[c];
      }
      const int64_t o = i0 * g.out[1] + i1 * g.out[2] + i2 * g.out[3];
      for (int64_t t = t0; t < t1; ++t) {
        acc_t v = bv + alphas[t] * (xv - bv);
        if (NORMALIZE) v = (v - mu) / sd;
        out[(b * m + t) * g.out[0] + o] = static_cast<out_t>(v);
      }
    }
  }
}

void path_images_out_cuda(const at::Tensor& x_in, const at::Tensor& baseline_in, const at::Tensor& alphas,
                          const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std,
                          at::Tensor& out) {
  const auto d = check_path_images_args(x_in, baseline_in, alphas, mean, std, out);
  IGCAM_CHECK(x_in.is_cuda(), "x must be a CUDA tensor for the CUDA kernel, got ", x_in.device());
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(x_in.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto acc = accumulation_type(x_in.scalar_type());
  at::Tensor x = x_in, baseline = baseline_in;
  if (baseline.scalar_type() != x.scalar_type()) {  // mixed dtypes: as the eager chain, in acc
    x = x.to(acc);
    baseline = baseline.to(acc);
  }
  at::Tensor base4 = baseline.dim() == 3 ? baseline.unsqueeze(0).expand({d.B, d.C, d.H, d.W}) : baseline;
  at::Tensor alphas_acc = alphas.to(acc).contiguous();
  at::Tensor mean_acc, std_acc;
  if (mean.has_value()) {
    mean_acc = mean->to(acc).contiguous();
    std_acc = std->to(acc).contiguous();
  }

  // Order the (C, H, W) dims by out's strides, outermost first (stable: ties keep C, H, W).
  int order[3] = {1, 2, 3};
  std::stable_sort(order, order + 3, [&](int a, int b) { return out.stride(a) > out.stride(b); });
  PathGeometry g;
  g.d1 = out.size(order[1]);
  g.d2 = out.size(order[2]);
  g.x[0] = x.stride(0);
  g.base[0] = base4.stride(0);
  g.out[0] = out.stride(0);
  g.cdim = 0;
  for (int i = 0; i < 3; ++i) {
    g.x[i + 1] = x.stride(order[i]);
    g.base[i + 1] = base4.stride(order[i]);
    g.out[i + 1] = out.stride(order[i]);
    if (order[i] == 1) g.cdim = i;
  }
  const int64_t per_image = d.C * d.H * d.W;
  constexpr int threads = 256;
  // Enough (b, t-chunk, element) threads to fill the GPU; each reads x once per chunk.
  const int64_t want = static_cast<int64_t>(num_sms()) * 2048 * 2;
  int64_t n_chunks = std::min<int64_t>(d.m, std::max<int64_t>(1, (want + per_image * d.B - 1) / (per_image * d.B)));
  const int64_t t_chunk = (d.m + n_chunks - 1) / n_chunks;
  n_chunks = (d.m + t_chunk - 1) / t_chunk;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((per_image + threads - 1) / threads, 1 << 30)),
                  static_cast<unsigned>(std::min<int64_t>(d.B * n_chunks, 65535)));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "path_images_out_cuda", [&] {
    using in_t = scalar_t;
    using acc_t = acc_type<in_t>;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "path_images_out_cuda", [&] {
      const acc_t* mp = mean_acc.defined() ? mean_acc.data_ptr<acc_t>() : nullptr;
      const acc_t* sp = std_acc.defined() ? std_acc.data_ptr<acc_t>() : nullptr;
      if (mean_acc.defined()) {
        path_images_kernel<in_t, scalar_t, acc_t, true><<<grid, threads, 0, stream>>>(
            x.data_ptr<in_t>(), base4.data_ptr<in_t>(), alphas_acc.data_ptr<acc_t>(), mp, sp,
            out.data_ptr<scalar_t>(), g, per_image, d.B, d.m, t_chunk, n_chunks);
      } else {
        path_images_kernel<in_t, scalar_t, acc_t, false><<<grid, threads, 0, stream>>>(
            x.data_ptr<in_t>(), base4.data_ptr<in_t>(), alphas_acc.data_ptr<acc_t>(), mp, sp,
            out.data_ptr<scalar_t>(), g, per_image, d.B, d.m, t_chunk, n_chunks);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// ------------------------------------------------------------------------------------------
// combine
// ------------------------------------------------------------------------------------------

constexpr int kCombineThreads = 256;
constexpr int kCombineWarps = kCombineThreads / kWarp;
constexpr int kMaxChunk = 1024;  // channels per block (shared weights)

// Element (k, p) of one row of a (N, K, h, w) tensor, p = i·w + j.
struct RowView {
  int64_t sN, sK, sP, sH, sW, w;
  template <int L>
  __device__ __forceinline__ int64_t at(int64_t k, int64_t p) const {
    if (L == static_cast<int>(Layout::SpatialInner)) return k * sK + p;
    if (L == static_cast<int>(Layout::ChannelInner)) return p * sP + k;
    return k * sK + (p / w) * sH + (p % w) * sW;
  }
};

RowView make_view(const at::Tensor& t) {
  return RowView{t.stride(0), t.stride(1), flat_spatial_stride(t), t.stride(2), t.stride(3), t.size(3)};
}

template <typename acc_t>
__device__ __forceinline__ acc_t gradcampp_term(acc_t g, acc_t sum_a) {
  const acc_t g2 = g * g;
  const acc_t a = g != acc_t(0) ? g2 / (acc_t(2) * g2 + sum_a * g2 * g + acc_t(1e-6)) : acc_t(0);
  return a * (g > acc_t(0) ? g : acc_t(0));
}

// Grid (chunk, row). LAYOUT is how A and G (and A') lie: per-channel rows (SpatialInner and
// Strided: a warp per channel) or per-pixel rows of channels (ChannelInner: lanes over channels).
template <typename scalar_t, typename acc_t, int LAYOUT>
__global__ void __launch_bounds__(kCombineThreads)
    combine_partial_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ G,
                           const acc_t* __restrict__ cw, const scalar_t* __restrict__ Ab, RowView va, RowView vg,
                           RowView vb, int64_t N, int64_t K, int64_t P, int64_t m, int64_t chunk, int weight_mode,
                           acc_t* __restrict__ partial) {
  __shared__ acc_t w_s[kMaxChunk];
  __shared__ acc_t red[kCombineThreads];
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t n_chunks = gridDim.x;
  const int64_t k0 = blockIdx.x * chunk;
  const int64_t kc = (K - k0) < chunk ? (K - k0) : chunk;
  const bool channel_inner = LAYOUT == static_cast<int>(Layout::ChannelInner);

  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const scalar_t* An = A + n * va.sN;
    const scalar_t* Gn = G ? G + n * vg.sN : nullptr;
    const scalar_t* Bn = Ab ? Ab + (n / m) * vb.sN : nullptr;

    // ---- pass 1: channel weights of this chunk -> w_s ----
    if (cw) {
      for (int64_t k = tid; k < kc; k += kCombineThreads) w_s[k] = cw[n * K + k0 + k];
    } else if (!channel_inner) {
      for (int64_t kl = warp; kl < kc; kl += kCombineWarps) {
        const int64_t k = k0 + kl;
        acc_t v = 0;
        if (weight_mode == 1) {
          acc_t sa = 0;
          for (int64_t p = lane; p < P; p += kWarp) sa += static_cast<acc_t>(An[va.at<LAYOUT>(k, p)]);
          sa = warp_sum(sa);
          for (int64_t p = lane; p < P; p += kWarp) v += gradcampp_term(static_cast<acc_t>(Gn[vg.at<LAYOUT>(k, p)]), sa);
          v = warp_sum(v);
        } else {
          for (int64_t p = lane; p < P; p += kWarp) v += static_cast<acc_t>(Gn[vg.at<LAYOUT>(k, p)]);
          v = warp_sum(v) / static_cast<acc_t>(P);
        }
        if (lane == 0) w_s[kl] = v;
      }
    } else {
      // Lanes over 32 consecutive channels (coalesced), warps over pixels, then a fixed-order
      // sum over the warps.
      for (int64_t kt = 0; kt < kc; kt += kWarp) {
        const int64_t kl = kt + lane;
        const bool valid = kl < kc;
        const int64_t k = k0 + kl;
        acc_t sa = 0;
        if (weight_mode == 1) {
          acc_t v = 0;
          if (valid)
            for (int64_t p = warp; p < P; p += kCombineWarps) v += static_cast<acc_t>(An[va.at<LAYOUT>(k, p)]);
          red[warp * kWarp + lane] = v;
          __syncthreads();
          for (int i = 0; i < kCombineWarps; ++i) sa += red[i * kWarp + lane];
          __syncthreads();
        }
        acc_t v = 0;
        if (valid) {
          for (int64_t p = warp; p < P; p += kCombineWarps) {
            const acc_t g = static_cast<acc_t>(Gn[vg.at<LAYOUT>(k, p)]);
            v += weight_mode == 1 ? gradcampp_term(g, sa) : g;
          }
        }
        red[warp * kWarp + lane] = v;
        __syncthreads();
        if (warp == 0) {
          acc_t s = 0;
          for (int i = 0; i < kCombineWarps; ++i) s += red[i * kWarp + lane];
          if (valid) w_s[kl] = weight_mode == 1 ? s : s / static_cast<acc_t>(P);
        }
        __syncthreads();
      }
    }
    __syncthreads();

    // ---- pass 2: partial[n, chunk, p] = Σ_{k in chunk} w_k (A[k, p] - A'[k, p]) ----
    acc_t* out_row = partial + (n * n_chunks + blockIdx.x) * P;
    if (channel_inner) {
      for (int64_t p = warp; p < P; p += kCombineWarps) {
        acc_t v = 0;
        for (int64_t kl = lane; kl < kc; kl += kWarp) {
          const int64_t k = k0 + kl;
          acc_t a = static_cast<acc_t>(An[va.at<LAYOUT>(k, p)]);
          if (Bn) a -= static_cast<acc_t>(Bn[vb.at<LAYOUT>(k, p)]);
          v += w_s[kl] * a;
        }
        v = warp_sum(v);
        if (lane == 0) out_row[p] = v;
      }
    } else {
      // Threads as (k group, pixel): consecutive threads read consecutive pixels.
      const int64_t pt = P < kCombineThreads ? P : kCombineThreads;
      const int64_t groups = kCombineThreads / pt;
      const int64_t pl = tid % pt, kg = tid / pt;
      for (int64_t p0 = 0; p0 < P; p0 += pt) {
        const int64_t p = p0 + pl;
        acc_t v = 0;
        if (kg < groups && p < P) {
          for (int64_t kl = kg; kl < kc; kl += groups) {
            const int64_t k = k0 + kl;
            acc_t a = static_cast<acc_t>(An[va.at<LAYOUT>(k, p)]);
            if (Bn) a -= static_cast<acc_t>(Bn[vb.at<LAYOUT>(k, p)]);
            v += w_s[kl] * a;
          }
        }
        red[tid] = v;
        __syncthreads();
        if (kg == 0 && p < P) {
          acc_t s = 0;
          for (int64_t i = 0; i < groups; ++i) s += red[i * pt + pl];
          out_row[p] = s;
        }
        __syncthreads();
      }
    }
    __syncthreads();
  }
}

// out[b, ij] = Σ_t ω_t ReLU?(Σ_chunks partial[b·m + t, chunk, ij]).
template <typename acc_t>
__global__ void combine_finish_kernel(const acc_t* __restrict__ partial, const acc_t* __restrict__ omega,
                                      acc_t* __restrict__ out, int64_t B, int64_t m, int64_t n_chunks, int64_t P,
                                      int64_t w, int64_t o0, int64_t o1, int64_t o2, bool relu) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < B * P;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / P, p = e % P;
    acc_t total = 0;
    for (int64_t t = 0; t < m; ++t) {
      const acc_t* row = partial + (b * m + t) * n_chunks * P + p;
      acc_t s = 0;
      for (int64_t c = 0; c < n_chunks; ++c) s += row[c * P];
      if (relu) s = s < acc_t(0) ? acc_t(0) : s;
      total += omega[t] * s;
    }
    out[b * o0 + (p / w) * o1 + (p % w) * o2] = total;
  }
}

void combine_out_cuda(const at::Tensor& activations, const std::optional<at::Tensor>& gradients,
                      const std::optional<at::Tensor>& channel_weights,
                      const std::optional<at::Tensor>& baseline_features, const at::Tensor& step_weights,
                      int64_t weight_mode, bool relu, at::Tensor& out) {
  const auto d = check_combine_args(activations, gradients, channel_weights, baseline_features, step_weights,
                                    weight_mode, out);
  IGCAM_CHECK(activations.is_cuda(), "activations must be a CUDA tensor for the CUDA kernel, got ",
              activations.device());
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(activations.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto acc = accumulation_type(activations.scalar_type());
  if (activations.numel() == 0) {  // K == 0: every map is zero
    out.zero_();
    return;
  }
  const int64_t N = d.N, K = d.K, P = d.h * d.w;

  // One layout for A, G and A': A's, unless G lies differently (then the general strided walk).
  Layout layout = classify_layout(activations);
  if (gradients.has_value() && classify_layout(*gradients) != layout) layout = Layout::Strided;
  at::Tensor Ab;
  if (baseline_features.has_value()) {
    Ab = baseline_features->dim() == 3 ? baseline_features->unsqueeze(0) : *baseline_features;
    // A' is at most m times smaller than A: lay it out like A.
    if (layout == Layout::ChannelInner && classify_layout(Ab) != Layout::ChannelInner)
      Ab = Ab.contiguous(at::MemoryFormat::ChannelsLast);
    else if (layout == Layout::SpatialInner && classify_layout(Ab) != Layout::SpatialInner)
      Ab = Ab.contiguous();
    if (Ab.size(0) == 1) Ab = Ab.expand({d.B, K, d.h, d.w});
  }
  at::Tensor cw = channel_weights.has_value() ? channel_weights->to(acc).contiguous() : at::Tensor();
  at::Tensor omega = step_weights.to(acc).contiguous();

  // Channel chunks: enough blocks to fill the GPU, at most kMaxChunk channels each.
  const int64_t min_chunks = (K + kMaxChunk - 1) / kMaxChunk;
  const int64_t max_chunks = std::max<int64_t>(min_chunks, (K + 31) / 32);
  const int64_t target_blocks = static_cast<int64_t>(num_sms()) * 8;
  int64_t n_chunks = std::min(max_chunks, std::max(min_chunks, (target_blocks + N - 1) / N));
  const int64_t chunk = (K + n_chunks - 1) / n_chunks;
  n_chunks = (K + chunk - 1) / chunk;
  at::Tensor partial = at::empty({N, n_chunks, P}, activations.options().dtype(acc));

  const RowView va = make_view(activations);
  const RowView vg = gradients.has_value() ? make_view(*gradients) : RowView{};
  const RowView vb = Ab.defined() ? make_view(Ab) : RowView{};
  const dim3 grid(static_cast<unsigned>(n_chunks), static_cast<unsigned>(std::min<int64_t>(N, 65535)));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, activations.scalar_type(), "combine_out_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* A = activations.data_ptr<scalar_t>();
    const scalar_t* G = gradients.has_value() ? gradients->data_ptr<scalar_t>() : nullptr;
    const scalar_t* B = Ab.defined() ? Ab.data_ptr<scalar_t>() : nullptr;
    const acc_t* W = cw.defined() ? cw.data_ptr<acc_t>() : nullptr;
    acc_t* part = partial.data_ptr<acc_t>();
    const int wm = static_cast<int>(weight_mode);
    switch (layout) {
      case Layout::SpatialInner:
        combine_partial_kernel<scalar_t, acc_t, 0><<<grid, kCombineThreads, 0, stream>>>(
            A, G, W, B, va, vg, vb, N, K, P, d.m, chunk, wm, part);
        break;
      case Layout::ChannelInner:
        combine_partial_kernel<scalar_t, acc_t, 1><<<grid, kCombineThreads, 0, stream>>>(
            A, G, W, B, va, vg, vb, N, K, P, d.m, chunk, wm, part);
        break;
      default:
        combine_partial_kernel<scalar_t, acc_t, 2><<<grid, kCombineThreads, 0, stream>>>(
            A, G, W, B, va, vg, vb, N, K, P, d.m, chunk, wm, part);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = d.B * P;
    const int threads = 256;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + threads - 1) / threads, 1 << 20));
    combine_finish_kernel<acc_t><<<blocks, threads, 0, stream>>>(part, omega.data_ptr<acc_t>(),
                                                                 out.data_ptr<acc_t>(), d.B, d.m, n_chunks, P, d.w,
                                                                 out.stride(0), out.stride(1), out.stride(2), relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ------------------------------------------------------------------------------------------
// upsample
// ------------------------------------------------------------------------------------------

constexpr int kUpsampleThreads = 512;

template <typename acc_t>
__device__ __forceinline__ void source_tap(int64_t o, acc_t scale, int64_t in, int64_t& i0, int64_t& i1, acc_t& l1) {
  acc_t src = scale * (static_cast<acc_t>(o) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = 0;
  i0 = static_cast<int64_t>(src);
  i1 = i0 < in - 1 ? i0 + 1 : i0;
  l1 = src - static_cast<acc_t>(i0);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kUpsampleThreads)
    upsample_kernel(const scalar_t* __restrict__ maps, acc_t* __restrict__ out, int64_t B, int64_t h, int64_t w,
                    int64_t H, int64_t W, acc_t scale_h, acc_t scale_w, int64_t m0, int64_t m1, int64_t m2,
                    int64_t o0, int64_t o1, int64_t o2, bool normalize) {
  __shared__ acc_t s_lo[kUpsampleThreads / kWarp], s_hi[kUpsampleThreads / kWarp];
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t HW = H * W;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const scalar_t* src = maps + b * m0;
    acc_t* dst = out + b * o0;
    acc_t lo = static_cast<acc_t>(INFINITY), hi = static_cast<acc_t>(-INFINITY);
    for (int64_t q = tid; q < HW; q += blockDim.x) {
      const int64_t i = q / W, j = q % W;
      int64_t y0, y1, x0, x1;
      acc_t ly, lx;
      source_tap(i, scale_h, h, y0, y1, ly);
      source_tap(j, scale_w, w, x0, x1, lx);
      // Lerp form: a flat neighbourhood gives exactly its value (see the CPU kernel).
      const acc_t a0 = static_cast<acc_t>(src[y0 * m1 + x0 * m2]), a1 = static_cast<acc_t>(src[y0 * m1 + x1 * m2]);
      const acc_t b0 = static_cast<acc_t>(src[y1 * m1 + x0 * m2]), b1 = static_cast<acc_t>(src[y1 * m1 + x1 * m2]);
      const acc_t top = a0 + lx * (a1 - a0), bottom = b0 + lx * (b1 - b0);
      const acc_t v = top + ly * (bottom - top);
      dst[i * o1 + j * o2] = v;
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    if (!normalize) continue;
    // Block min/max (threads with no element hold +inf / -inf).
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) {
      const acc_t ol = __shfl_xor_sync(0xffffffffu, lo, o), oh = __shfl_xor_sync(0xffffffffu, hi, o);
      lo = ol < lo ? ol : lo;
      hi = oh > hi ? oh : hi;
    }
    if (lane == 0) {
      s_lo[warp] = lo;
      s_hi[warp] = hi;
    }
    __syncthreads();
    lo = s_lo[0];
    hi = s_hi[0];
    for (int i = 1; i < static_cast<int>(blockDim.x / kWarp); ++i) {
      lo = s_lo[i] < lo ? s_lo[i] : lo;
      hi = s_hi[i] > hi ? s_hi[i] : hi;
    }
    const acc_t range = acc_t(1e-7) + (hi - lo);
    // Each thread rescales the elements it wrote itself: no further synchronisation needed.
    for (int64_t q = tid; q < HW; q += blockDim.x) {
      const int64_t i = q / W, j = q % W;
      acc_t& v = dst[i * o1 + j * o2];
      v = (v - lo) / range;
    }
    __syncthreads();  // s_lo / s_hi are reused by the next map
  }
}

void upsample_out_cuda(const at::Tensor& maps, bool normalize, at::Tensor& out) {
  check_upsample_args(maps, out);
  IGCAM_CHECK(maps.is_cuda(), "maps must be a CUDA tensor for the CUDA kernel, got ", maps.device());
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(maps.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = maps.size(0), h = maps.size(1), w = maps.size(2), H = out.size(1), W = out.size(2);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(B, 1 << 20));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "upsample_out_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    // As upsample_bilinear2d with an output size: scale = float(in) / float(out) in acc_t.
    const acc_t scale_h = static_cast<acc_t>(h) / static_cast<acc_t>(H);
    const acc_t scale_w = static_cast<acc_t>(w) / static_cast<acc_t>(W);
    upsample_kernel<scalar_t, acc_t><<<blocks, kUpsampleThreads, 0, stream>>>(
        maps.data_ptr<scalar_t>(), out.data_ptr<acc_t>(), B, h, w, H, W, scale_h, scale_w, maps.stride(0),
        maps.stride(1), maps.stride(2), out.stride(0), out.stride(1), out.stride(2), normalize);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// An empty kernel compiled for exactly the architectures the kernels above were: whether the
// driver finds an image of it for a device answers "can these kernels run there" without
// launching anything (igcam_fast.ops.backends.compiled asks before dispatching to CUDA).
__global__ void kernel_image_probe() {}

}  // namespace

// cudaSuccess (0) when this module holds a kernel image (SASS, or PTX the driver can JIT) for
// `device`, else the CUDA error (cudaErrorNoKernelImageForDevice, ...). Clears the error it causes.
int probe_kernel_image(int device) {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return static_cast<int>(cudaGetLastError());
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    cudaFuncAttributes attributes;
    err = cudaFuncGetAttributes(&attributes, kernel_image_probe);
  }
  cudaGetLastError();  // a failed query must not surface as the next launch's error
  cudaSetDevice(previous);
  return static_cast<int>(err);
}

const char* cuda_error_name(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

TORCH_LIBRARY_IMPL(igcam_fast, CUDA, m) {
  m.impl("path_images_out", &path_images_out_cuda);
  m.impl("combine_out", &combine_out_cuda);
  m.impl("upsample_out", &upsample_out_cuda);
}

}  // namespace igcam_fast
