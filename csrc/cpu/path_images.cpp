// CPU kernel of igcam_fast::path_images_out: the path images x' + α_t (x − x'), optionally
// normalised, for every image and node.
#include "kernels_common.h"

namespace igcam_fast {
namespace cpu {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(igcam_fast, CPU, m) { m.impl("path_images_out", &path_images_out_cpu); }

}  // namespace cpu
}  // namespace igcam_fast
