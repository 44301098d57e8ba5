// CPU kernel of igcam_fast::combine_out: channel weights, baseline subtraction, ReLU and the
// weighted sum over the path points.
#include "kernels_common.h"

namespace igcam_fast {
namespace cpu {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(igcam_fast, CPU, m) { m.impl("combine_out", &combine_out_cpu); }

}  // namespace cpu
}  // namespace igcam_fast
