"""The engine: Integrated Grad-CAM, Grad-CAM and Grad-CAM++ on one batched, graph-free pipeline.

One call explains B images:
    1. path images  γ(α_t) = x' + α_t (x - x') for every image and node, (B·m, C, H, W)  [ops.path_images]
    2. forward of the network in chunks of rows, with no autograd graph in the body: the target
       layer's forward hook hands the head a fresh leaf, so the gradient is taken only from the
       class scores back to the layer (never into the body, never into the parameters)
    3. per target: ∂y/∂A by one backward through the head
    4. weighting, baseline subtraction, ReLU and the sum over the path points     [ops.combine]
    5. bilinear upsampling to the input size, optionally min-max scaled          [ops.upsample]
The baseline features A' = A(x') are computed once per (model, layer, shape, dtype, device,
baseline, weights version) and reused.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import record_function

from igcam_fast import ops
from igcam_fast.core.quadrature import canonical_rule, path_nodes
from igcam_fast.core.targets import Targets, resolve_targets

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The default quadrature: the fewest forward passes measured to stay within 1 % (relative L2)
#: of a 128-node Gauss-Legendre map on ten real photos (worst 0.87 %; README, "Defaults").
DEFAULT_RULE = "gausslegendre"
DEFAULT_STEPS = 10

#: Named settings. "accurate": Gauss-Legendre m = 16 (worst 0.51 % on the same photos).
#: "paper": the paper's right Riemann sum, m = 50. "demo": the authors' code (α_i = i/m for
#: i = 0..m-1, no A' subtraction, sum). "gradcam_minus_baseline": the ablation of Grad-CAM with
#: A' subtracted (m = 1 at α = 1).
PRESETS = {
    "default": dict(rule=DEFAULT_RULE, steps=DEFAULT_STEPS, subtract_baseline=True),
    "accurate": dict(rule="gausslegendre", steps=16, subtract_baseline=True),
    "paper": dict(rule="right", steps=50, subtract_baseline=True),
    "demo": dict(rule="demo", steps=50, subtract_baseline=False),
    "gradcam_minus_baseline": dict(rule="right", steps=1, subtract_baseline=True),
}

METHODS = ("igcam", "gradcam", "gradcampp")

#: Rows (path images) per forward when not given: small enough for CPU caches and GPU memory
#: at 224×224, large enough to amortise per-call overhead. CUDA halves it on out-of-memory.
DEFAULT_BATCH_ROWS = {"cpu": 64, "cuda": 256}

# A' per model, keyed by everything that changes it; weak so that models can be freed.
_BASELINE_FEATURES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_BASELINE_CACHE_SIZE = 8


@dataclass
class CamResult:
    """Everything one call produced.

    maps: (B, H, W) — or (B, T, H, W) for T targets per image — on the input's device.
    layer_maps: the same at layer resolution, (B, [T,] h, w), before upsampling and scaling.
    logits: (B, classes) of the real inputs when they were computed (targets=None), else None.
    targets: (B, T) class indices when the targets were indices, else None.
    backend: the name of the backend that ran the fused ops.
    """

    maps: torch.Tensor
    layer_maps: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    backend: str = ""
    settings: dict = field(default_factory=dict)


def chunk_plan(batch: int, steps: int, rows: int):
    """The (image slice, step slice) pieces of one call, each at most ``rows`` path images.

    Whole images (all their path points) go together when m <= rows, so that combine sees each
    image's full sum; otherwise one image's path points are split and the pieces added up.
    (Score-CAM and Ablation-CAM split (image, channel) copies the same way.)
    """
    if steps <= rows:
        per = max(1, rows // steps)
        for b0 in range(0, batch, per):
            yield slice(b0, min(batch, b0 + per)), slice(0, steps)
    else:
        for b in range(batch):
            for t0 in range(0, steps, rows):
                yield slice(b, b + 1), slice(t0, min(steps, t0 + rows))


def default_batch_rows(device: torch.device) -> int:
    return DEFAULT_BATCH_ROWS.get(torch.device(device).type, 64)


class _StopForward(Exception):
    """Raised by the hook once the layer's output is captured and nothing after it is needed."""


def resolve_layer(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """The (name, module) of ``layer``: a dotted name in ``model`` or a module inside it."""
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            close = [n for n in modules if n and (layer in n or n.endswith(layer.split(".")[-1]))][:5]
            hint = f"; did you mean one of {close}?" if close else ""
            raise ValueError(f"layer {layer!r} is not a module of the model{hint}")
        return layer, modules[layer]
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ValueError("layer is a module that is not part of the model")
    raise TypeError(f"layer must be a module name (str) or an nn.Module, got {type(layer).__name__}")


def _weights_version(model: nn.Module) -> int:
    # In-place updates (optimiser steps, load_state_dict) bump _version; versions only grow.
    return sum(t._version for t in itertools.chain(model.parameters(), model.buffers()))


class LayerExplainer:
    """What every explainer of one layer of one model shares: the model and its layer, one
    forward hook on the layer (removed by :meth:`close`, the context manager or garbage
    collection), and the checks of an input batch. Subclasses implement ``_on_layer_output``.
    """

    def __init__(self, model: nn.Module, layer, *, batch_rows: int | None = None, allow_training: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if batch_rows is not None and (not isinstance(batch_rows, int) or batch_rows < 1):
            raise ValueError(f"batch_rows must be a positive int, got {batch_rows!r}")
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.batch_rows = batch_rows
        self.allow_training = allow_training
        self._hook = self.layer.register_forward_hook(self._on_layer_output)

    def _on_layer_output(self, module, inputs, output):
        raise NotImplementedError

    def rows(self, device) -> int:
        """Rows (images or path images) per forward on ``device``."""
        return self.batch_rows or default_batch_rows(device)

    def close(self) -> None:
        """Remove the hook from the model. Idempotent."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values")
        if self.model.training and not self.allow_training:
            raise RuntimeError("the model is in training mode: BatchNorm and Dropout would make the maps depend "
                               "on the batch and on chance. Call model.eval() first (or pass allow_training=True)")


class CamEngine(LayerExplainer):
    """Explains images with one of :data:`METHODS` at one layer of one model.

    Keeps its hook on the layer and the cached baseline features between calls; use it as a
    context manager (or call :meth:`close`) to remove the hook.

    Args:
        model: the network, in eval mode; its output must be (B, classes) scores.
        layer: the target layer (dotted name or module); its output must be (N, K, h, w).
        method: "igcam" (Integrated Grad-CAM), "gradcam" or "gradcampp".
        preset: one of :data:`PRESETS`; explicit rule/steps/subtract_baseline override it.
        rule: quadrature rule (right, left, middle, trapezoid, gausslegendre, demo).
        steps: number of path points m.
        baseline: "black" (black pixels through the normalisation mean/std), "zeros",
            a tensor (C, H, W) or (B, C, H, W) in model-input space, or a callable x -> tensor.
        mean, std: the model's input normalisation, used for the "black" baseline.
        subtract_baseline: subtract A' = A(x') at each path point (the paper) or not (demo).
        relu: ReLU at each path point (the paper) or signed maps.
        normalize: min-max scale each map to [0, 1] as pytorch-grad-cam does (at layer
            resolution, then again after upsampling).
        output_size: (H, W) of the output maps; None: the input's size; "layer": no upsampling.
        batch_rows: path images per forward; None: a per-device default.
        autocast: None (the input's dtype), torch.float16 or torch.bfloat16 for the forward.
        channels_last: run the forward on channels_last path images (None: per-device default).
        backend: force a backend for the fused ops (see igcam_fast.ops.explain_backends).
        allow_training: explain a model in training mode anyway (BatchNorm/Dropout then
            make the map depend on the batch and on chance; refused by default).
        reshape_transform: a function applied to the layer's output and to its gradient to make
            them (N, K, h, w), e.g. for the token outputs of ViT/Swin layers (pytorch-grad-cam's
            meaning; it must only rearrange elements).
    """

    def __init__(self, model: nn.Module, layer, *, method: str = "igcam", preset: str | None = None,
                 rule: str | None = None, steps: int | None = None, baseline="black",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, subtract_baseline: bool | None = None,
                 relu: bool = True, normalize: bool = False, output_size=None,
                 batch_rows: int | None = None, autocast: torch.dtype | None = None,
                 channels_last: bool | None = None, backend: str | None = None,
                 allow_training: bool = False, reshape_transform=None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        if method == "igcam":
            if preset is not None and preset not in PRESETS:
                raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
            settings = dict(PRESETS[preset or "default"])
            if rule is not None:
                settings["rule"] = rule
            if steps is not None:
                settings["steps"] = steps
            if subtract_baseline is not None:
                settings["subtract_baseline"] = subtract_baseline
        else:  # Grad-CAM and Grad-CAM++: one point, the input itself, no baseline
            if preset is not None or rule is not None or (steps not in (None, 1)):
                raise ValueError(f"method={method!r} takes no preset, rule or steps (it is one point, α = 1)")
            settings = dict(rule="right", steps=1, subtract_baseline=bool(subtract_baseline))
        self.rule = canonical_rule(settings["rule"])
        self.steps = settings["steps"]
        self.subtract_baseline = settings["subtract_baseline"]
        self.alphas, self.step_weights = path_nodes(self.rule, self.steps)  # validates steps
        self.baseline = baseline
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if self.mean.shape != self.std.shape or self.mean.dim() != 1:
            raise ValueError(f"mean and std must be 1-D sequences of the same length, got {tuple(self.mean.shape)} "
                             f"and {tuple(self.std.shape)}")
        if (self.std == 0).any():
            raise ValueError("std must not contain zeros")
        self.relu = bool(relu)
        self.normalize = bool(normalize)
        self.output_size = output_size
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be None, torch.float16 or torch.bfloat16, got {autocast!r}")
        self.autocast = autocast
        self.channels_last = channels_last
        self.backend = backend
        self.reshape_transform = reshape_transform
        self._mode = None  # what the hook does on the next forward: None, "features", "grad"
        self._captured = None
        super().__init__(model, layer, batch_rows=batch_rows, allow_training=allow_training)

    # ---- the hook ----------------------------------------------------------------------------

    def _on_layer_output(self, module, inputs, output):
        if self._mode is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {self.layer_name!r} must output a tensor, got {type(output).__name__}")
        shaped = self._to_maps(output) if self.reshape_transform is not None else output
        if not isinstance(shaped, torch.Tensor) or shaped.dim() != 4:
            shape = tuple(shaped.shape) if isinstance(shaped, torch.Tensor) else type(shaped).__name__
            hint = "" if self.reshape_transform else " (give reshape_transform for token-shaped outputs)"
            raise ValueError(f"layer {self.layer_name!r} must output a 4-D (N, K, h, w) tensor, got {shape}{hint}")
        if self._mode == "features":
            self._captured = output.detach()
            raise _StopForward
        # "grad": the body ran without a graph; from here on record one, rooted at a fresh leaf.
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        self._captured = leaf
        # A clone, so that an in-place op after the layer (ReLU(inplace=True)) touches neither
        # the leaf nor the activations we keep.
        return leaf.clone()

    def _to_maps(self, t):
        return self.reshape_transform(t) if self.reshape_transform is not None else t

    def _forward(self, images, mode):
        """Run the model on images with the hook in ``mode``; returns (layer output, logits|None)."""
        self._mode, self._captured = mode, None
        logits = None
        try:
            with torch.no_grad(), self._autocast_context(images.device):
                try:
                    logits = self.model(images)
                except _StopForward:
                    pass
        finally:
            self._mode = None
        if self._captured is None:
            raise ValueError(f"layer {self.layer_name!r} was not called during the forward pass")
        captured, self._captured = self._captured, None
        return captured, logits

    def _autocast_context(self, device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    # ---- inputs ------------------------------------------------------------------------------

    def _baseline_image(self, x):
        """x' in model-input space: (C, H, W) shared, or (B, C, H, W) per image."""
        B, C, H, W = x.shape
        spec = self.baseline
        if callable(spec) and not isinstance(spec, torch.Tensor):
            spec = spec(x)
        if isinstance(spec, str):
            if spec == "zeros":
                return torch.zeros(C, H, W, dtype=x.dtype, device=x.device)
            if spec == "black":
                if self.mean.numel() != C:
                    raise ValueError(f"baseline='black' needs mean/std with {C} channels to match x, "
                                     f"got {self.mean.numel()}")
                black = (0.0 - self.mean) / self.std
                return black.to(x.device, x.dtype)[:, None, None].expand(C, H, W).contiguous()
            raise ValueError(f"baseline must be 'black', 'zeros', a tensor or a callable, got {spec!r}")
        if not isinstance(spec, torch.Tensor):
            raise TypeError(f"baseline must be 'black', 'zeros', a tensor or a callable, got {type(spec).__name__}")
        if spec.dim() == 4 and spec.shape[0] == 1:
            spec = spec[0]
        if tuple(spec.shape) not in ((C, H, W), (B, C, H, W)):
            raise ValueError(f"baseline must have shape {(C, H, W)} or {(B, C, H, W)} to match x, "
                             f"got {tuple(spec.shape)}")
        if not bool(torch.isfinite(spec).all()):
            raise ValueError("baseline contains NaN or infinite values")
        return spec.to(x.device, x.dtype)

    def _uses_channels_last(self, device) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return True  # measured faster on the CPU at identical output; the cuDNN default on GPUs

    def _baseline_features(self, base, x):
        """A' for a shared (C, H, W) baseline (cached) or a per-image (B, C, H, W) one."""
        channels_last = self._uses_channels_last(x.device)
        images = base[None] if base.dim() == 3 else base
        images = images.to(self.autocast or x.dtype)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if base.dim() == 4 or not isinstance(self.baseline, str):
            features = self._to_maps(self._forward(images, "features")[0])
            return features if base.dim() == 4 else features[0]
        key = (self.layer_name, self.reshape_transform, self.baseline, tuple(self.mean.tolist()), tuple(self.std.tolist()),
               tuple(x.shape[1:]), x.dtype, x.device, self.autocast, channels_last,
               _weights_version(self.model))
        per_model = _BASELINE_FEATURES.setdefault(self.model, {})
        if key not in per_model:
            features = self._to_maps(self._forward(images, "features")[0])
            if len(per_model) >= _BASELINE_CACHE_SIZE:
                per_model.pop(next(iter(per_model)))
            per_model[key] = features[0]
        return per_model[key]

    # ---- the call ----------------------------------------------------------------------------

    def __call__(self, x, targets=None) -> torch.Tensor:
        """Maps for x (B, C, H, W): (B, H, W), or (B, T, H, W) for T targets per image."""
        return self.explain(x, targets).maps

    def explain(self, x, targets=None) -> CamResult:
        """Explain x; see :class:`CamResult` for what comes back."""
        self._check_input(x)
        device = x.device
        B = x.shape[0]
        logits_x = None
        if targets is None:
            with record_function("igcam::argmax_forward"):
                self._mode = None
                with torch.no_grad(), self._autocast_context(device):
                    logits_x = self.model(x)
                self._check_logits(logits_x, B)
        resolved = resolve_targets(targets, B, argmax=lambda: logits_x.argmax(dim=1))
        # Grad-CAM and Grad-CAM++ explain the input itself: no baseline image at all.
        base = self._baseline_image(x) if self.method == "igcam" else None
        baseline_features = None
        if self.subtract_baseline:
            with record_function("igcam::baseline_features"):
                baseline_features = self._baseline_features(base, x)
        rows = self.rows(device)
        while True:
            try:
                layer_maps, chosen = self._integrate(x, base, baseline_features, resolved, rows)
                break
            except torch.cuda.OutOfMemoryError:
                if rows == 1:
                    raise
                rows = max(1, rows // 2)
                self.batch_rows = rows  # remember: the next call starts where this one fitted
                torch.cuda.empty_cache()
        with record_function("igcam::upsample"):
            maps = self._upsample(layer_maps, x.shape[-2:])
        if resolved.per_image == 1:
            maps, layer_maps = maps[:, 0], layer_maps[:, 0]
        settings = dict(method=self.method, rule=self.rule, steps=self.steps,
                        subtract_baseline=self.subtract_baseline, layer=self.layer_name,
                        autocast=str(self.autocast), batch_rows=rows)
        return CamResult(maps=maps, layer_maps=layer_maps, logits=logits_x, targets=resolved.indices,
                         backend=chosen, settings=settings)

    def _check_logits(self, logits, rows):
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model must return (N, classes) scores, got {shape}")

    def _integrate(self, x, base, baseline_features, targets: Targets, rows):
        device = x.device
        B, m, T = x.shape[0], self.steps, targets.per_image
        node_dtype = ops.accumulation_dtype(x.dtype)
        alphas = self.alphas.to(device, node_dtype)
        step_weights = self.step_weights.to(device, node_dtype)
        channels_last = self._uses_channels_last(device)
        forward_dtype = self.autocast or x.dtype
        weight_mode = "gradcampp" if self.method == "gradcampp" else "gradcam"
        single_input_point = m == 1 and float(self.alphas[0]) == 1.0
        layer_maps = None
        chosen = ""
        for images, steps in chunk_plan(B, m, rows):
            with record_function("igcam::path"):
                if single_input_point:  # Grad-CAM: the input itself, bit for bit
                    path = x[images].to(forward_dtype)
                    if channels_last:
                        path = path.contiguous(memory_format=torch.channels_last)
                else:
                    path = ops.path_images(x[images], base if base.dim() == 3 else base[images], alphas[steps],
                                           dtype=forward_dtype, channels_last=channels_last, backend=self.backend)
            with record_function("igcam::forward"):
                leaf, logits = self._forward(path, "grad")
            activations = self._to_maps(leaf.detach())
            self._check_logits(logits, path.shape[0])
            targets.check_range(logits.shape[1])
            r = steps.stop - steps.start
            A_base = None
            if baseline_features is not None:
                A_base = baseline_features if baseline_features.dim() == 3 else baseline_features[images]
                A_base = A_base.to(activations.dtype)
            for column in range(T):
                with record_function("igcam::head_backward"):
                    score = targets.scores(logits, images, r, column)
                    (gradients,) = torch.autograd.grad(score, leaf, retain_graph=column + 1 < T)
                    gradients = self._to_maps(gradients)
                with record_function("igcam::combine"):
                    part = ops.combine(activations, gradients, None, A_base, step_weights[steps],
                                       weight_mode=weight_mode, relu=self.relu, backend=self.backend)
                if layer_maps is None:
                    layer_maps = torch.zeros(B, T, *part.shape[1:], dtype=part.dtype, device=device)
                    chosen = ops.choose_backend(device, {activations.dtype}, self.backend).name
                layer_maps[images, column] += part
            del leaf, activations, logits
        return layer_maps, chosen

    def _upsample(self, layer_maps, input_size):
        B, T, h, w = layer_maps.shape
        if isinstance(self.output_size, str):
            if self.output_size != "layer":
                raise ValueError(f"output_size must be (H, W), None or 'layer', got {self.output_size!r}")
            return layer_maps
        size = tuple(self.output_size) if self.output_size is not None else tuple(input_size)
        flat = layer_maps.reshape(B * T, h, w)
        if self.normalize:  # pytorch-grad-cam scales at layer resolution, resizes, then scales again
            flat = ops.minmax_scale(flat)
        return ops.upsample(flat, size, normalize=self.normalize, backend=self.backend).reshape(B, T, *size)



def _run(method, model, x, layer, targets, return_result, options):
    with CamEngine(model, layer, method=method, **options) as engine:
        return engine.explain(x, targets) if return_result else engine(x, targets)


def integrated_gradcam(model, x, layer, targets=None, *, return_result: bool = False, **options):
    """Integrated Grad-CAM maps of x (B, C, H, W) at ``layer``; options as :class:`CamEngine`.

    Returns (B, H, W) maps (B, T, H, W for several targets per image), or a :class:`CamResult`
    with return_result=True. Baseline features are cached per model between calls.
    """
    return _run("igcam", model, x, layer, targets, return_result, options)


def gradcam(model, x, layer, targets=None, *, return_result: bool = False, **options):
    """Grad-CAM through the same engine (m = 1 at the input, no baseline)."""
    return _run("gradcam", model, x, layer, targets, return_result, options)


def gradcampp(model, x, layer, targets=None, *, return_result: bool = False, **options):
    """Grad-CAM++ (pytorch-grad-cam's closed form) through the same engine."""
    return _run("gradcampp", model, x, layer, targets, return_result, options)
