// CPU kernel of igcam_fast::upsample_out: bilinear resize of the maps (torch's taps),
// optionally min-max scaled.
#include "kernels_common.h"

namespace igcam_fast {
namespace cpu {
namespace {

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

TORCH_LIBRARY_IMPL(igcam_fast, CPU, m) { m.impl("upsample_out", &upsample_out_cpu); }

}  // namespace cpu
}  // namespace igcam_fast
