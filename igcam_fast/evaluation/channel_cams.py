"""Score-CAM and Ablation-CAM in the engine's style: batched over images and channels, chunked,
on the input's device, several targets per image sharing every forward pass.

Both weigh the K channels of the target layer's activations A (K×h×w) without gradients:
    Score-CAM (Wang et al. 2020, as pytorch-grad-cam): each channel, bilinearly upsampled
        (align_corners=True) and min-max scaled to [0, 1], multiplies the input; the target's
        score on that masked input, softmax-ed over the channels, is w_k.
    Ablation-CAM (Desai & Ramaswamy 2020): channel k of A is set to ``ablation_value`` (0) and
        the rest of the network re-run; w_k = (y^c − y^c_k) / y^c.
    L^c = ReLU(Σ_k w_k A_k), bilinearly upsampled (align_corners=False) and optionally min-max scaled.

Cost: Score-CAM needs K forwards of the whole network per image (all targets share them);
Ablation-CAM runs the network *after* the layer on K ablated copies of A — the body before the
layer runs once per chunk on the real images (not once per channel, as pytorch-grad-cam does),
the hook hands the rest of the network the ablated batch. That needs the part after the layer to
treat rows independently (true for pooling/flatten/linear heads and for any layer whose output
only flows forward); set ``full_forward=True`` for anything else (each row then repeats the body).

pytorch-grad-cam's AblationLayer sets the channel to 0 when the layer's output has minimum 0
(post-ReLU layers, the usual case) and to min − 1e7 otherwise; ``ablation_value=None`` copies that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igcam_fast import ops
from igcam_fast.core.engine import CamResult
from igcam_fast.core.layer import LayerExplainer, chunk_plan
from igcam_fast.core.targets import Targets, resolve_targets

EXTRA_METHODS = ("scorecam", "ablationcam")


class _ChannelCAM(LayerExplainer):
    """Shared machinery: the hook, targets, per-row scores, the weighted sum and upsampling."""

    method = ""

    def __init__(self, model: nn.Module, layer, *, batch_rows: int | None = None, normalize: bool = False,
                 output_size=None, reshape_transform=None, backend: str | None = None):
        if reshape_transform is not None:
            raise NotImplementedError(f"{type(self).__name__} does not support reshape_transform yet")
        self.normalize = bool(normalize)
        self.output_size = output_size
        self.backend = backend
        super().__init__(model, layer, batch_rows=batch_rows)
        if len(self.layers) > 1:
            self.close()
            raise ValueError(f"{type(self).__name__} explains one layer; got {len(self.layers)}")

    def _on_layer_output(self, module, inputs, output, index):
        state = self._state
        if state.mode == "capture":
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise ValueError(f"layer {self.layer_name!r} must output a 4-D (N, K, h, w) tensor")
            if state.calls[0] == 1:
                state.captured = output.detach().clone()
            return None
        return state.captured  # "replace": the ablated copies stand in for the layer's output

    def _capture(self, x):
        """(activations (B, K, h, w), logits (B, classes)) of the real inputs: one forward."""
        with self._hooked("capture") as state, torch.no_grad():
            logits = self.model(x)
            self._check_called_once(state)
            A = state.captured
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError("the model must return (N, classes) scores")
        return A, logits

    @staticmethod
    def _row_scores(targets: Targets, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(rows, T) target scores; images (rows,) is the image index of each row."""
        if targets.indices is not None:
            cls = targets.indices.to(logits.device)[images]  # (rows, T)
            return logits.gather(1, cls)
        cols = []
        for t in range(targets.per_image):
            cols.append(torch.stack([torch.as_tensor(targets.callables[int(b)][t](row)).reshape(())
                                     for b, row in zip(images.tolist(), logits)]))
        return torch.stack(cols, dim=1).to(logits.dtype)

    def __call__(self, x, targets=None):
        return self.explain(x, targets).maps

    def explain(self, x, targets=None) -> CamResult:
        self._check_input(x)
        A, logits = self._capture(x)
        resolved = resolve_targets(targets, x.shape[0], argmax=lambda: logits.argmax(dim=1))
        resolved.check_range(logits.shape[1])
        weights = self._weights(x, A, logits, resolved)  # (B, T, K)
        layer_maps = torch.einsum("btk,bkhw->bthw", weights.to(A.dtype), A).clamp_(min=0)
        B, T, h, w = layer_maps.shape
        if isinstance(self.output_size, str):
            if self.output_size != "layer":
                raise ValueError(f"output_size must be (H, W), None or 'layer', got {self.output_size!r}")
            maps = layer_maps
        else:
            size = tuple(self.output_size) if self.output_size is not None else tuple(x.shape[-2:])
            maps = ops.upsample(layer_maps.reshape(B * T, h, w).contiguous(), size, normalize=self.normalize,
                                backend=self.backend).reshape(B, T, *size)
        if resolved.per_image == 1:
            maps, layer_maps = maps[:, 0], layer_maps[:, 0]
        return CamResult(maps=maps, layer_maps=layer_maps, logits=logits if targets is None else None,
                         targets=resolved.indices, backend="torch",
                         settings=dict(method=self.method, layer=self.layer_name, batch_rows=self.rows(x.device)))

    def _weights(self, x, A, logits, targets):  # pragma: no cover - abstract
        raise NotImplementedError


class ScoreCAM(_ChannelCAM):
    """Score-CAM (pytorch-grad-cam's formulation): K masked forwards per image, shared by all targets."""

    method = "scorecam"

    def _weights(self, x, A, logits, targets):
        B, K = A.shape[:2]
        H, W = x.shape[-2:]
        rows = self.rows(x.device)
        scores = torch.empty(B * K, targets.per_image, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for start in range(0, B * K, rows):
                r = torch.arange(start, min(B * K, start + rows), device=x.device)
                b, k = r // K, r % K
                up = F.interpolate(A[b, k][:, None].float(), size=(H, W), mode="bilinear", align_corners=True)[:, 0]
                flat = up.reshape(len(r), -1)
                lo, hi = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
                up = ((up - lo) / (hi - lo + 1e-8)).to(x.dtype)
                out = self._masked_forward(x[b] * up[:, None])
                scores[start:start + len(r)] = self._row_scores(targets, out, b).double()
        return scores.reshape(B, K, -1).transpose(1, 2).softmax(dim=-1)  # (B, T, K)

    def _masked_forward(self, masked):
        """The model on the masked images, channels_last where the model accepts it: the layout the
        engine's forwards use, measured faster on the CPU (and cuDNN's preferred one). A model that
        rejects it (a ``.view()`` on conv features) is run contiguous from then on."""
        if getattr(self, "_channels_last", True):
            try:
                out = self.model(masked.contiguous(memory_format=torch.channels_last))
                self._channels_last = True
                return out
            except RuntimeError:
                if getattr(self, "_channels_last", None) is not None:
                    raise
                self._channels_last = False
        return self.model(masked)


class AblationCAM(_ChannelCAM):
    """Ablation-CAM: the head re-run on K ablated copies of the layer's output per image."""

    method = "ablationcam"

    def __init__(self, model, layer, *, ablation_value: float | None = 0.0, full_forward: bool = False, **kw):
        super().__init__(model, layer, **kw)
        self.ablation_value = ablation_value
        self.full_forward = bool(full_forward)

    def _weights(self, x, A, logits, targets):
        B, K = A.shape[:2]
        rows = self.rows(x.device)
        base = self._row_scores(targets, logits, torch.arange(B, device=x.device)).double()  # (B, T)
        ablated = torch.empty(B, K, targets.per_image, dtype=torch.float64, device=x.device)
        if self.ablation_value is None:  # pytorch-grad-cam's AblationLayer
            value_of = lambda a: 0.0 if float(a.min()) == 0 else float(a.min()) - 1e7  # noqa: E731
        else:
            value_of = lambda a: self.ablation_value  # noqa: E731
        for images, channels in chunk_plan(B, K, rows):  # (images, channels) blocks of <= rows copies
            nb, kc = images.stop - images.start, channels.stop - channels.start
            copies = A[images, None].expand(nb, kc, *A.shape[1:]).clone()  # (nb, kc, K, h, w)
            ch = torch.arange(channels.start, channels.stop, device=x.device)
            value = value_of(A[images])
            copies[:, torch.arange(kc, device=x.device), ch] = value
            body_input = x[images].repeat_interleave(kc, dim=0) if self.full_forward else x[images]
            with self._hooked("replace") as state, torch.no_grad():
                state.captured = copies.reshape(nb * kc, *A.shape[1:])
                out = self.model(body_input)
                state.captured = None
            if out.dim() != 2 or out.shape[0] != nb * kc:
                raise ValueError(f"{self.layer_name!r}: the network after the layer did not return one row per "
                                 f"ablated copy ({tuple(out.shape)}); use AblationCAM(..., full_forward=True)")
            img = torch.arange(images.start, images.stop, device=x.device).repeat_interleave(kc)
            ablated[images, channels] = self._row_scores(targets, out, img).double().reshape(nb, kc, -1)
        weights = (base[:, None, :] - ablated) / base[:, None, :]
        return weights.transpose(1, 2)  # (B, T, K)


def make_extra(method: str, model, layer, **kw):
    if method == "scorecam":
        return ScoreCAM(model, layer, **kw)
    if method == "ablationcam":
        return AblationCAM(model, layer, **kw)
    raise ValueError(f"method must be one of {EXTRA_METHODS}, got {method!r}")
