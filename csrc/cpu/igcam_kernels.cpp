// CPU kernels of the igcam_fast ops (schemas: csrc/igcam_ops.cpp, truth: igcam_fast/reference.py).
//
// Parallel with at::parallel_for (the extension is built with -fopenmp), inner loops written over
// unit-stride runs so the compiler vectorises them; reductions keep LANES independent partial
// sums so they vectorise without -ffast-math. Accumulation is in float (double for double input).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "igcam_checks.h"

namespace igcam_fast {
namespace {

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

// ------------------------------------------------------------------------------------------
// path_images
// ------------------------------------------------------------------------------------------

template <typename in_t, typename out_t, bool NORMALIZE, bool UNIT>
inline void write_path_row(out_t* __restrict__ dst, int64_t stride, int64_t n, const acc_type<in_t>* __restrict__ xr,
                           const acc_type<in_t>* __restrict__ br, const acc_type<in_t>* __restrict__ mu,
                           const acc_type<in_t>* __restrict__ sd, acc_type<in_t> a) {
  using acc_t = acc_type<in_t>;
  for (int64_t q = 0; q < n; ++q) {
    acc_t v = br[q] + a * (xr[q] - br[q]);
    if (NORMALIZE) v = (v - mu[q]) / sd[q];
    dst[UNIT ? q : q * stride] = static_cast<out_t>(v);
  }
}

template <typename in_t, typename out_t>
void path_images_kernel(const at::Tensor& x, const at::Tensor& base4, const at::Tensor& alphas,
                        const at::Tensor& mean, const at::Tensor& std, at::Tensor& out) {
  using acc_t = acc_type<in_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), m = alphas.size(0);
  const in_t* xp = x.data_ptr<in_t>();
  const in_t* bp = base4.data_ptr<in_t>();
  const acc_t* ap = alphas.data_ptr<acc_t>();
  const bool normalize = mean.defined();
  const acc_t* mp = normalize ? mean.data_ptr<acc_t>() : nullptr;
  const acc_t* sp = normalize ? std.data_ptr<acc_t>() : nullptr;
  out_t* op = out.data_ptr<out_t>();
  const auto xs = x.strides(), bs = base4.strides(), os = out.strides();

  auto emit = [&](out_t* dst, int64_t stride, int64_t n, const acc_t* xr, const acc_t* br, const acc_t* mu,
                  const acc_t* sd, acc_t a) {
    if (normalize) {
      if (stride == 1) write_path_row<in_t, out_t, true, true>(dst, 1, n, xr, br, mu, sd, a);
      else write_path_row<in_t, out_t, true, false>(dst, stride, n, xr, br, mu, sd, a);
    } else {
      if (stride == 1) write_path_row<in_t, out_t, false, true>(dst, 1, n, xr, br, mu, sd, a);
      else write_path_row<in_t, out_t, false, false>(dst, stride, n, xr, br, mu, sd, a);
    }
  };

  // Walk out in its own memory order: rows of W (contiguous) or of W·C (channels_last).
  const bool channel_inner = C > 1 && os[1] < os[3];
  if (!channel_inner) {
    const int64_t rows = B * C * H;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * m));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(4 * W);
      acc_t *xr = buf.data(), *br = xr + W, *mu = br + W, *sd = mu + W;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / (C * H), c = (r / H) % C, h = r % H;
        const in_t* xrow = xp + b * xs[0] + c * xs[1] + h * xs[2];
        const in_t* brow = bp + b * bs[0] + c * bs[1] + h * bs[2];
        for (int64_t w = 0; w < W; ++w) {
          xr[w] = static_cast<acc_t>(xrow[w * xs[3]]);
          br[w] = static_cast<acc_t>(brow[w * bs[3]]);
          if (normalize) {
            mu[w] = mp[c];
            sd[w] = sp[c];
          }
        }
        for (int64_t t = 0; t < m; ++t) {
          emit(op + (b * m + t) * os[0] + c * os[1] + h * os[2], os[3], W, xr, br, mu, sd, ap[t]);
        }
      }
    });
  } else {
    const int64_t rows = B * H, WC = W * C;
    const bool unit = os[1] == 1 && os[3] == C;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, WC * m));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(4 * WC);
      std::vector<out_t> tmp(unit ? 0 : WC);
      acc_t *xr = buf.data(), *br = xr + WC, *mu = br + WC, *sd = mu + WC;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        for (int64_t w = 0; w < W; ++w) {
          for (int64_t c = 0; c < C; ++c) {
            xr[w * C + c] = static_cast<acc_t>(xp[b * xs[0] + c * xs[1] + h * xs[2] + w * xs[3]]);
            br[w * C + c] = static_cast<acc_t>(bp[b * bs[0] + c * bs[1] + h * bs[2] + w * bs[3]]);
            if (normalize) {
              mu[w * C + c] = mp[c];
              sd[w * C + c] = sp[c];
            }
          }
        }
        for (int64_t t = 0; t < m; ++t) {
          out_t* dst = op + (b * m + t) * os[0] + h * os[2];
          if (unit) {
            emit(dst, 1, WC, xr, br, mu, sd, ap[t]);
          } else {
            emit(tmp.data(), 1, WC, xr, br, mu, sd, ap[t]);
            for (int64_t w = 0; w < W; ++w)
              for (int64_t c = 0; c < C; ++c) dst[w * os[3] + c * os[1]] = tmp[w * C + c];
          }
        }
      }
    });
  }
}

void path_images_out_cpu(const at::Tensor& x_in, const at::Tensor& baseline_in, const at::Tensor& alphas,
                         const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std,
                         at::Tensor& out) {
  const auto d = check_path_images_args(x_in, baseline_in, alphas, mean, std, out);
  IGCAM_CHECK(x_in.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x_in.device());
  if (out.numel() == 0) return;
  const auto acc = accumulation_type(x_in.scalar_type());
  at::Tensor x = x_in, baseline = baseline_in;
  if (baseline.scalar_type() != x.scalar_type()) {
    // Mixed dtypes: both go to the accumulation type, as the eager chain does (x is small next to out).
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "path_images_out_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "path_images_out_cpu", [&] {
      path_images_kernel<in_t, scalar_t>(x, base4, alphas_acc, mean_acc, std_acc, out);
    });
  });
}

// ------------------------------------------------------------------------------------------
// combine
// ------------------------------------------------------------------------------------------

// Where element (k, p) of one row of a (N, K, h, w) tensor lies, p = i·w + j.
struct RowView {
  Layout layout;
  int64_t sK, sP;                // channel stride; flat spatial stride (ChannelInner)
  const int64_t* spatial;        // offsets of each p (Strided, SpatialInner: p)
  inline int64_t at(int64_t k, int64_t p) const {
    switch (layout) {
      case Layout::SpatialInner: return k * sK + p;
      case Layout::ChannelInner: return p * sP + k;
      default: return k * sK + spatial[p];
    }
  }
};

inline RowView make_view(const at::Tensor& t, Layout layout, std::vector<int64_t>& spatial) {
  const int64_t h = t.size(-2), w = t.size(-1);
  spatial.resize(h * w);
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) spatial[i * w + j] = i * t.stride(-2) + j * t.stride(-1);
  return RowView{layout, t.stride(-3), flat_spatial_stride(t), spatial.data()};
}

template <typename scalar_t>
struct CombineRow {
  using acc_t = acc_type<scalar_t>;
  int64_t K, P;
  bool pp;

  // Σ_p T[k, p] for every k, in the order T lies in memory.
  void channel_sums(const scalar_t* __restrict__ T, const RowView& v, acc_t* __restrict__ out) const {
    if (v.layout == Layout::ChannelInner) {
      std::fill(out, out + K, acc_t(0));
      for (int64_t p = 0; p < P; ++p) {
        const scalar_t* __restrict__ row = T + p * v.sP;
        for (int64_t k = 0; k < K; ++k) out[k] += static_cast<acc_t>(row[k]);
      }
    } else if (v.layout == Layout::SpatialInner) {
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* __restrict__ row = T + k * v.sK;
        out[k] = lane_sum<acc_t>(P, [&](int64_t p) { return static_cast<acc_t>(row[p]); });
      }
    } else {
      for (int64_t k = 0; k < K; ++k)
        out[k] = lane_sum<acc_t>(P, [&](int64_t p) { return static_cast<acc_t>(T[v.at(k, p)]); });
    }
  }

  // Grad-CAM++: Σ_p a·max(g, 0), a = g²/(2g² + sum_a·g³ + eps) (0 where g == 0), as the reference.
  static inline acc_t gradcampp_term(acc_t g, acc_t sum_a) {
    const acc_t g2 = g * g;
    const acc_t a = g != acc_t(0) ? g2 / (acc_t(2) * g2 + sum_a * g2 * g + acc_t(1e-6)) : acc_t(0);
    return a * (g > acc_t(0) ? g : acc_t(0));
  }

  void gradcampp_weights(const scalar_t* __restrict__ G, const RowView& v, const acc_t* __restrict__ sum_a,
                         acc_t* __restrict__ w) const {
    if (v.layout == Layout::ChannelInner) {
      std::fill(w, w + K, acc_t(0));
      for (int64_t p = 0; p < P; ++p) {
        const scalar_t* __restrict__ row = G + p * v.sP;
        for (int64_t k = 0; k < K; ++k) w[k] += gradcampp_term(static_cast<acc_t>(row[k]), sum_a[k]);
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        const acc_t sa = sum_a[k];
        w[k] = lane_sum<acc_t>(P, [&](int64_t p) { return gradcampp_term(static_cast<acc_t>(G[v.at(k, p)]), sa); });
      }
    }
  }

  // s[p] = Σ_k w[k] (A[k, p] - A'[k, p]); A' (may be null) lies like A.
  void weighted_sum(const scalar_t* __restrict__ A, const scalar_t* __restrict__ Ab, const RowView& va,
                    const RowView& vb, const acc_t* __restrict__ w, acc_t* __restrict__ s) const {
    if (va.layout == Layout::ChannelInner) {
      for (int64_t p = 0; p < P; ++p) {
        const scalar_t* __restrict__ row = A + p * va.sP;
        if (Ab) {
          const scalar_t* __restrict__ brow = Ab + p * vb.sP;
          s[p] = lane_sum<acc_t>(K, [&](int64_t k) {
            return w[k] * (static_cast<acc_t>(row[k]) - static_cast<acc_t>(brow[k]));
          });
        } else {
          s[p] = lane_sum<acc_t>(K, [&](int64_t k) { return w[k] * static_cast<acc_t>(row[k]); });
        }
      }
    } else if (va.layout == Layout::SpatialInner) {
      std::fill(s, s + P, acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const acc_t wk = w[k];
        const scalar_t* __restrict__ row = A + k * va.sK;
        if (Ab) {
          const scalar_t* __restrict__ brow = Ab + k * vb.sK;
          for (int64_t p = 0; p < P; ++p) s[p] += wk * (static_cast<acc_t>(row[p]) - static_cast<acc_t>(brow[p]));
        } else {
          for (int64_t p = 0; p < P; ++p) s[p] += wk * static_cast<acc_t>(row[p]);
        }
      }
    } else {
      std::fill(s, s + P, acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const acc_t wk = w[k];
        for (int64_t p = 0; p < P; ++p) {
          acc_t a = static_cast<acc_t>(A[va.at(k, p)]);
          if (Ab) a -= static_cast<acc_t>(Ab[vb.at(k, p)]);
          s[p] += wk * a;
        }
      }
    }
  }
};

template <typename scalar_t>
void combine_kernel(const at::Tensor& A, const at::Tensor& G, const at::Tensor& cw, const at::Tensor& Ab,
                    const at::Tensor& omega, int64_t weight_mode, bool relu, at::Tensor& out,
                    const CombineDims& d) {
  using acc_t = acc_type<scalar_t>;
  const int64_t N = d.N, K = d.K, P = d.h * d.w, m = d.m;
  std::vector<int64_t> sp_a, sp_g, sp_b;
  const Layout la = classify_layout(A);
  const RowView va = make_view(A, la, sp_a);
  const RowView vg = G.defined() ? make_view(G, classify_layout(G), sp_g) : RowView{};
  const RowView vb = Ab.defined() ? make_view(Ab, la == Layout::Strided ? Layout::Strided : classify_layout(Ab), sp_b)
                                  : RowView{};
  const scalar_t* ap = A.data_ptr<scalar_t>();
  const scalar_t* gp = G.defined() ? G.data_ptr<scalar_t>() : nullptr;
  const scalar_t* bp = Ab.defined() ? Ab.data_ptr<scalar_t>() : nullptr;
  const acc_t* cwp = cw.defined() ? cw.data_ptr<acc_t>() : nullptr;
  const acc_t* wp = omega.data_ptr<acc_t>();
  const int64_t sAN = A.stride(0), sGN = G.defined() ? G.stride(0) : 0, sBN = Ab.defined() ? Ab.stride(0) : 0;

  // s of every row (N, P): small; the (N, K, h, w) products are never formed.
  std::vector<acc_t> s_all(N * P);
  const CombineRow<scalar_t> row{K, P, weight_mode == 1};
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w(K), sum_a(row.pp ? K : 0);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* An = ap + n * sAN;
      if (cwp) {
        std::copy(cwp + n * K, cwp + (n + 1) * K, w.begin());
      } else if (row.pp) {
        row.channel_sums(An, va, sum_a.data());
        row.gradcampp_weights(gp + n * sGN, vg, sum_a.data(), w.data());
      } else {
        row.channel_sums(gp + n * sGN, vg, w.data());
        for (int64_t k = 0; k < K; ++k) w[k] /= static_cast<acc_t>(P);
      }
      acc_t* s = s_all.data() + n * P;
      row.weighted_sum(An, bp ? bp + (n / m) * sBN : nullptr, va, vb, w.data(), s);
      if (relu)
        for (int64_t p = 0; p < P; ++p) s[p] = s[p] < acc_t(0) ? acc_t(0) : s[p];
    }
  });

  acc_t* op = out.data_ptr<acc_t>();
  const int64_t o0 = out.stride(0), o1 = out.stride(1), o2 = out.stride(2), wdt = d.w;
  at::parallel_for(0, d.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t p = 0; p < P; ++p) {
        acc_t v = 0;
        for (int64_t t = 0; t < m; ++t) v += wp[t] * s_all[(b * m + t) * P + p];
        op[b * o0 + (p / wdt) * o1 + (p % wdt) * o2] = v;
      }
    }
  });
}

void combine_out_cpu(const at::Tensor& activations, const std::optional<at::Tensor>& gradients,
                     const std::optional<at::Tensor>& channel_weights,
                     const std::optional<at::Tensor>& baseline_features, const at::Tensor& step_weights,
                     int64_t weight_mode, bool relu, at::Tensor& out) {
  const auto d = check_combine_args(activations, gradients, channel_weights, baseline_features, step_weights,
                                    weight_mode, out);
  IGCAM_CHECK(activations.device().is_cpu(), "activations must be a CPU tensor for the CPU kernel, got ",
              activations.device());
  if (out.numel() == 0) return;
  const auto acc = accumulation_type(activations.scalar_type());
  if (activations.numel() == 0) {  // K == 0: every map is zero
    out.zero_();
    return;
  }
  at::Tensor G = gradients.has_value() ? *gradients : at::Tensor();
  at::Tensor cw = channel_weights.has_value() ? channel_weights->to(acc).contiguous() : at::Tensor();
  at::Tensor Ab;
  if (baseline_features.has_value()) {
    Ab = baseline_features->dim() == 3 ? baseline_features->unsqueeze(0) : *baseline_features;
    // A' is (B or 1, K, h, w), m times smaller than A: lay it out like A so both walk together.
    const Layout la = classify_layout(activations);
    if (la == Layout::ChannelInner && classify_layout(Ab) != Layout::ChannelInner)
      Ab = Ab.contiguous(at::MemoryFormat::ChannelsLast);
    else if (la == Layout::SpatialInner && classify_layout(Ab) != Layout::SpatialInner)
      Ab = Ab.contiguous();
    if (Ab.size(0) == 1) Ab = Ab.expand({d.B, d.K, d.h, d.w});  // stride 0 over images
  }
  at::Tensor omega = step_weights.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, activations.scalar_type(), "combine_out_cpu", [&] {
    combine_kernel<scalar_t>(activations, G, cw, Ab, omega, weight_mode, relu, out, d);
  });
}

// ------------------------------------------------------------------------------------------
// upsample
// ------------------------------------------------------------------------------------------

// Source taps of torch's bilinear resize (align_corners=False, size given): the scale is
// float(in)/float(out) in the accumulation type, as upsample_bilinear2d computes it.
template <typename acc_t>
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<acc_t> l0, l1;
  Taps(int64_t in, int64_t outn) : i0(outn), i1(outn), l0(outn), l1(outn) {
    const acc_t scale = static_cast<acc_t>(in) / static_cast<acc_t>(outn);
    for (int64_t o = 0; o < outn; ++o) {
      acc_t src = scale * (static_cast<acc_t>(o) + acc_t(0.5)) - acc_t(0.5);
      if (src < 0) src = 0;
      const int64_t lo = static_cast<int64_t>(src);
      i0[o] = lo;
      i1[o] = lo < in - 1 ? lo + 1 : lo;
      l1[o] = src - static_cast<acc_t>(lo);
      l0[o] = acc_t(1) - l1[o];
    }
  }
};

template <typename scalar_t>
void upsample_kernel(const at::Tensor& maps, bool normalize, at::Tensor& out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t B = maps.size(0), h = maps.size(1), w = maps.size(2), H = out.size(1), W = out.size(2);
  const Taps<acc_t> th(h, H), tw(w, W);
  const scalar_t* mp = maps.data_ptr<scalar_t>();
  acc_t* op = out.data_ptr<acc_t>();
  const int64_t m0 = maps.stride(0), m1 = maps.stride(1), m2 = maps.stride(2);
  const int64_t o0 = out.stride(0), o1 = out.stride(1), o2 = out.stride(2);
  const int64_t grain = std::max<int64_t>(1, 16384 / W);
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, i = r % H;
      const scalar_t* r0 = mp + b * m0 + th.i0[i] * m1;
      const scalar_t* r1 = mp + b * m0 + th.i1[i] * m1;
      const acc_t h1 = th.l1[i];
      acc_t* dst = op + b * o0 + i * o1;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t a = tw.i0[j] * m2, c = tw.i1[j] * m2;
        const acc_t w1 = tw.l1[j];
        // Lerp form: a constant neighbourhood interpolates to exactly that constant (the min-max
        // scaling would otherwise magnify rounding noise of a flat map by up to 1e7).
        const acc_t a0 = static_cast<acc_t>(r0[a]), a1 = static_cast<acc_t>(r0[c]);
        const acc_t b0 = static_cast<acc_t>(r1[a]), b1 = static_cast<acc_t>(r1[c]);
        const acc_t top = a0 + w1 * (a1 - a0), bottom = b0 + w1 * (b1 - b0);
        dst[j * o2] = top + h1 * (bottom - top);
      }
    }
  });
  if (!normalize) return;
  std::vector<acc_t> lo(B), range(B);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t mn = op[b * o0], mx = mn;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          const acc_t v = op[b * o0 + i * o1 + j * o2];
          mn = v < mn ? v : mn;
          mx = v > mx ? v : mx;
        }
      lo[b] = mn;
      range[b] = acc_t(1e-7) + (mx - mn);
    }
  });
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, i = r % H;
      acc_t* dst = op + b * o0 + i * o1;
      const acc_t l = lo[b], q = range[b];
      for (int64_t j = 0; j < W; ++j) dst[j * o2] = (dst[j * o2] - l) / q;
    }
  });
}

void upsample_out_cpu(const at::Tensor& maps, bool normalize, at::Tensor& out) {
  check_upsample_args(maps, out);
  IGCAM_CHECK(maps.device().is_cpu(), "maps must be a CPU tensor for the CPU kernel, got ", maps.device());
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps.scalar_type(), "upsample_out_cpu", [&] {
    upsample_kernel<scalar_t>(maps, normalize, out);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(igcam_fast, CPU, m) {
  m.impl("path_images_out", &path_images_out_cpu);
  m.impl("combine_out", &combine_out_cpu);
  m.impl("upsample_out", &upsample_out_cpu);
}

}  // namespace igcam_fast
