"""The engine: Integrated Grad-CAM, Grad-CAM and Grad-CAM++ on one batched, graph-free pipeline.

One call explains B images:
    1. path images  γ(α_t) = x' + α_t (x - x') for every image and node, (B·m, C, H, W)  [ops.path_images]
    2. forward of the network in chunks of rows, with no autograd graph in the body: the target
       layer's forward hook hands the head a fresh leaf, so the gradient is taken only from the
       class scores back to the layer (never into the body, never into the parameters)
    3. per target: the channel weights — from one backward through the head, or, for a global
       average pooling + linear head, straight from the linear layer's weights (the forward then
       stops at the layer; igcam_fast.core.head)
    4. weighting, baseline subtraction, ReLU and the sum over the path points     [ops.combine]
    5. bilinear upsampling to the input size, optionally min-max scaled          [ops.upsample]
The options are one :class:`~igcam_fast.core.config.CamConfig`; the method (which points of the path,
which channel weights) one :class:`~igcam_fast.core.methods.Method`; x' is resolved once per call and
A' = A(x') cached between calls while the weights are unchanged (igcam_fast.core.baseline).

Over 400 lines on purpose: one call's pipeline reads top to bottom in this one file; what can
stand alone (config, methods, baseline, head, layer hook, nested integration) lives beside it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.profiler import record_function

from igcam_fast import ops
from igcam_fast.core import adaptive
from igcam_fast.core.baseline import BASELINE_FEATURES, Baseline, resolve_baseline
from igcam_fast.core.config import (DEFAULT_BATCH_ROWS, DEFAULT_RULE, DEFAULT_STEPS, PRESETS, CamConfig,
                                    default_batch_rows)
from igcam_fast.core.head import find_linear_head
from igcam_fast.core.layer import LayerExplainer, chunk_plan, resolve_layer, training_dependent_modules
from igcam_fast.core.methods import METHODS, get_method
from igcam_fast.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from igcam_fast.core.quadrature import NESTED_RULES, embedded_rule
from igcam_fast.core.targets import Targets, resolve_targets

__all__ = [
    "CamEngine", "CamResult", "integrated_gradcam", "gradcam", "gradcampp", "chunk_plan", "resolve_layer",
    "default_batch_rows", "LayerExplainer", "CamConfig", "PRESETS", "METHODS", "DEFAULT_RULE", "DEFAULT_STEPS",
    "DEFAULT_BATCH_ROWS", "IMAGENET_MEAN", "IMAGENET_STD",
]


@dataclass
class CamResult:
    """Everything one call produced.

    maps: (B, H, W) — or (B, T, H, W) for T targets per image — on the input's device.
    layer_maps: the same at layer resolution, (B, [T,] h, w), before upsampling and scaling.
        An engine of several layers gives a tuple with one such tensor per layer for both (and for
        ``error_estimate``), in the order of its layers; every forward and backward is shared.
    logits: (B, classes) of the real inputs when they were computed (targets=None), else None.
    targets: (B, T) class indices when the targets were indices, else None.
    backends: {op name: backend name} for every fused op the call ran (``"a+b"`` if an op ran on two).
    backend: the backend that ran the combine op (``backends["combine"]``).
    closed_form_head: whether the channel weights came from the linear head's weights (no backward);
        ``head`` says why or why not.
    precision_fallback_rows: path images whose fp16 activations or gradients were not finite and were
        redone in float32 (0 unless autocast=torch.float16).
    settings: the method, quadrature and layer, for records.
    error_estimate: (B, T) float64 estimate of each layer map's relative L2 quadrature error: for
        ``tol=`` and the nested ``rule="patterson"`` (igcam_fast.core.adaptive), and for the fixed
        rules that contain a coarser rule's nodes (right/left Riemann and the demo's with an even m,
        trapezoid with an odd m, midpoint with m divisible by 3: a second fused sum over the coarse
        nodes, Richardson's estimate; igcam_fast.core.quadrature.embedded_rule). None for the others
        (Gauss–Legendre; ``settings["error_estimate"]`` says why). An estimate above ``tol`` means
        the image reached ``max_steps``.
    path_points: (B,) int64 path points (forward passes) each image got.
    """

    maps: torch.Tensor
    layer_maps: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    backends: dict = field(default_factory=dict)
    backend: str = ""
    closed_form_head: bool = False
    head: str = ""
    precision_fallback_rows: int = 0
    settings: dict = field(default_factory=dict)
    error_estimate: torch.Tensor | None = None
    path_points: torch.Tensor | None = None


class _StopForward(Exception):
    """Raised by the hook once the layer's output is captured and nothing after it is needed."""


class CamEngine(LayerExplainer):
    """Explains images with one method at one layer of one model.

    Keeps its hook on the layer and the cached baseline features between calls; use it as a
    context manager (or call :meth:`close`) to remove the hook; a dropped engine removes it too.
    Safe to call from several threads (each thread's forwards are its own).

    Args:
        model: the network, in eval mode; its output must be (B, classes) scores.
        layer: the target layer (dotted name or module); its output must be (N, K, h, w). A list of
            layers explains all of them from the same forward and backward passes (one map per layer).
        config: a :class:`CamConfig`; or give its fields as keyword arguments (``method``, ``preset``,
            ``rule``, ``steps``, ``baseline``, ``mean``, ``std``, ...), documented there.
    """

    def __init__(self, model: nn.Module, layer, *, config: CamConfig | None = None, **options):
        if config is not None and options:
            raise TypeError("give either config= or keyword options, not both")
        self.config = config if config is not None else CamConfig.from_options(**options)
        self._method = get_method(self.config.method)
        self.alphas, self.step_weights = self._method.path(self.config.rule, self.config.steps)
        nested = self.config.tol is not None or self.config.rule in NESTED_RULES  # igcam_fast.core.adaptive
        # a fixed rule's own error estimate, where its nodes contain a coarser rule's (the nested
        # integration has its own; a one-point method has no integral)
        if not self._method.walks_path:
            estimate = (None, 0.0, "none: one point (no path integral)")
        elif nested:
            estimate = (None, 0.0, "the nested rule's own (igcam_fast.core.adaptive)")
        else:
            estimate = embedded_rule(self.config.rule, self.config.steps)
        self._coarse_weights, self._estimate_factor, self._estimate_note = estimate
        self._layout_by_shape: dict[tuple, bool] = {}  # input (C, H, W) -> channels_last accepted
        super().__init__(model, layer, batch_rows=self.config.batch_rows, allow_training=self.config.allow_training)
        self.several_layers = len(self.layers) > 1
        if self.several_layers and nested:
            self.close()
            raise ValueError("tol= and rule='patterson' take one layer per engine (their rounds stop each map on its "
                             "own estimate); give one layer, or a fixed rule for several layers")
        self.mean, self.std = self.config.normalisation(model)

    # The settings, readable as attributes.
    method = property(lambda self: self.config.method)
    rule = property(lambda self: self.config.rule)
    steps = property(lambda self: self.config.steps)
    subtract_baseline = property(lambda self: self.config.subtract_baseline)
    relu = property(lambda self: self.config.relu)

    def baseline_image(self, x) -> torch.Tensor:
        """x' for x (B, C, H, W) by this engine's rule: (C, H, W) shared or (B, C, H, W) per image."""
        return resolve_baseline(self.config.baseline, x, self.mean, self.std).image

    # ---- the hook ----------------------------------------------------------------------------

    def _on_layer_output(self, module, inputs, output, index):
        state = self._state
        if state.calls[index] > 1:  # a second call in one forward: counted, refused after the forward
            return None
        name = self.layer_names[index]
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {name!r} must output a tensor, got {type(output).__name__}")
        shaped = self._to_maps(output)
        if not isinstance(shaped, torch.Tensor) or shaped.dim() != 4:
            shape = tuple(shaped.shape) if isinstance(shaped, torch.Tensor) else type(shaped).__name__
            hint = "" if self.config.reshape_transform else " (give reshape_transform for token-shaped outputs)"
            raise ValueError(f"layer {name!r} must output a 4-D (N, K, h, w) tensor, got {shape}{hint}")
        if state.mode == "features":
            state.outputs[index] = output.detach()
            if all(kept is not None for kept in state.outputs):  # nothing after the last layer is needed
                raise _StopForward
            return None
        # "grad": the body ran without a graph; from here on record one, rooted at a fresh leaf.
        # A layer after an explained one already has a graph back to it: its gradient is taken at
        # the output itself, so one backward serves every layer.
        torch.set_grad_enabled(True)
        kept = output if output.requires_grad else output.detach().requires_grad_(True)
        state.outputs[index] = kept
        # A clone, so that an in-place op after the layer (ReLU(inplace=True)) touches neither
        # the kept tensor nor the activations we read from it.
        return kept.clone()

    def _to_maps(self, t):
        transform = self.config.reshape_transform
        return transform(t) if transform is not None else t

    def _forward(self, images, mode, autocast):
        """Run the model on images with the hooks in ``mode``; returns ([output per layer], logits|None).

        A channels_last forward that the model rejects (a ``.view()`` on conv features) is rerun
        contiguous, and that input shape is remembered as contiguous-only; the maps are the same.
        """
        key = tuple(images.shape[1:])
        trying = self.config.channels_last is None and key not in self._layout_by_shape  # channels_last, untried
        try:
            result = self._forward_once(images, mode, autocast)
        except RuntimeError as err:
            if not trying or isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            self._layout_by_shape[key] = False
            return self._forward_once(_laid_out(images, channels_last=False), mode, autocast)
        if mode == "grad" and trying:  # the whole model ran in this layout
            self._layout_by_shape[key] = True
        return result

    def _forward_once(self, images, mode, autocast):
        logits = None
        with self._hooked(mode) as state:
            with torch.no_grad(), _autocast(images.device, autocast):
                try:
                    logits = self.model(images)
                except _StopForward:
                    pass
            if mode == "grad":
                self._check_called_once(state)
            else:
                for name, kept in zip(self.layer_names, state.outputs):
                    if kept is None:
                        raise ValueError(f"layer {name!r} was not called during the forward pass")
            return list(state.outputs), logits

    def _channels_last(self, x) -> bool:
        if self.config.channels_last is not None:
            return self.config.channels_last
        # Measured faster on the CPU at identical output, and cuDNN's preferred layout; a model
        # that cannot take it is found on its first forward (see _forward).
        return self._layout_by_shape.get(tuple(x.shape[1:]), True)

    # ---- the call ----------------------------------------------------------------------------

    def __call__(self, x, targets=None) -> torch.Tensor:
        """Maps for x (B, C, H, W): (B, H, W), or (B, T, H, W) for T targets per image."""
        return self.explain(x, targets).maps

    def explain(self, x, targets=None) -> CamResult:
        """Explain x; see :class:`CamResult` for what comes back."""
        self._check_input(x)
        # The head backward needs autograd even when the caller runs under no_grad or inference_mode.
        with torch.inference_mode(False), self._training_guard(), ops.recording() as ran:
            result = self._explain(x, targets)
        result.backends = dict(ran)
        result.backend = ran.get("combine", "")
        return result

    def _explain(self, x, targets) -> CamResult:
        config, device, B = self.config, x.device, x.shape[0]
        logits_x = None
        if targets is None:
            with record_function("igcam::argmax_forward"), torch.no_grad(), _autocast(device, config.autocast):
                logits_x = self.model(x)
            self._check_logits(logits_x, B)
            if not bool(torch.isfinite(logits_x).all()):
                raise ValueError("the model's scores for x contain NaN or infinite values, so no class can be chosen")
        resolved = resolve_targets(targets, B, argmax=lambda: logits_x.argmax(dim=1))
        head, head_reason = self._linear_head(resolved)
        if head is not None:
            resolved.check_range(head.num_classes)
        baseline = (resolve_baseline(config.baseline, x, self.mean, self.std)
                    if self._method.walks_path or config.subtract_baseline else None)
        baseline_features = None
        if config.subtract_baseline:
            with record_function("igcam::baseline_features"):
                baseline_features = self._baseline_features(baseline, x)
        rows = self.rows(device)
        nested_rule = self._method.walks_path and (config.tol is not None or config.rule in NESTED_RULES)
        integrate = partial(adaptive.integrate_engine, self) if nested_rule else self._integrate
        while True:
            try:
                # extra: the NestedIntegral of a nested rule; else the embedded coarse rule's maps or None
                layer_maps, fallback, extra = integrate(x, baseline, baseline_features, resolved, rows, head)
                break
            except torch.cuda.OutOfMemoryError:
                if rows == 1:
                    raise
                rows = max(1, rows // 2)
                self.batch_rows = rows  # remember: the next call starts where this one fitted
                torch.cuda.empty_cache()
        layer_maps_full = layer_maps  # (B, T, h, w) per layer, before the T = 1 squeeze
        with record_function("igcam::upsample"):
            maps = [self._upsample(per_layer, x.shape[-2:]) for per_layer in layer_maps]
        if resolved.per_image == 1:
            maps, layer_maps = [m[:, 0] for m in maps], [m[:, 0] for m in layer_maps]
        maps, layer_maps = (tuple(maps), tuple(layer_maps)) if self.several_layers else (maps[0], layer_maps[0])
        settings = dict(method=config.method, rule=config.rule, steps=config.steps,
                        subtract_baseline=config.subtract_baseline,
                        layer=list(self.layer_names) if self.several_layers else self.layer_name,
                        autocast=str(config.autocast), batch_rows=rows, channels_last=self._channels_last(x))
        if nested_rule:  # (B,) points and (B, T) estimates of the nested integration
            settings.update(rule="patterson", steps=int(extra.path_points.max()), tol=config.tol,
                            not_converged=torch.nonzero(~extra.converged).flatten().tolist())
            estimate, points = extra.error_estimate, extra.path_points
        else:
            settings["error_estimate"] = self._estimate_note
            points = torch.full((B,), len(self.alphas), dtype=torch.int64)
            estimate = None
            if extra is not None:  # Richardson on the embedded coarse rule, (B, T) per layer
                estimate = tuple(self._estimate_factor * adaptive.relative_difference(fine, coarse).cpu()
                                 for fine, coarse in zip(layer_maps_full, extra))
                estimate = estimate if self.several_layers else estimate[0]
        return CamResult(maps=maps, layer_maps=layer_maps, logits=logits_x, targets=resolved.indices,
                         closed_form_head=head is not None, head=head_reason,
                         precision_fallback_rows=fallback, settings=settings, error_estimate=estimate,
                         path_points=points)

    def _check_logits(self, logits, rows):
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model must return (N, classes) scores, got {shape}")

    def _linear_head(self, targets: Targets):
        """The closed-form head where it applies to this call, and the reason either way."""
        if self.config.closed_form_head is False:
            return None, "closed_form_head=False"
        if self.several_layers:
            return None, "several layers: one backward gives the gradient at each of them"
        if not self._method.gradients_are_linear_in_head_weights:
            return None, f"{self.config.method} weighs gradients non-linearly"
        if targets.indices is None:
            return None, "callable targets may be non-linear in the scores"
        if self.config.reshape_transform is not None:
            return None, "a reshape_transform is given"
        if training_dependent_modules(self.model):
            return None, "a module whose forward depends on it is in training mode"
        return find_linear_head(self.model, self.layer_name)

    def _baseline_features(self, baseline: Baseline, x):
        """[A' per layer] for a shared (C, H, W) baseline (cached; each (K, h, w)) or a per-image
        (B, C, H, W) one (each (B, K, h, w)), from one forward that stops after the last layer."""
        config = self.config
        images = baseline.image[None] if baseline.shared else baseline.image
        channels_last = self._channels_last(x)

        def compute():
            for autocast in _precisions(config.autocast):
                rows = _laid_out(images.to(autocast or x.dtype), channels_last)
                features = [self._to_maps(kept) for kept in self._forward(rows, "features", autocast)[0]]
                if all(bool(torch.isfinite(f).all()) for f in features):
                    return features if not baseline.shared else [f[0] for f in features]
            raise ValueError(f"the baseline's activations at layer {self._names()} contain NaN or infinite "
                             f"values (in {x.dtype}): the model produces them for the baseline image")

        if not baseline.shared or baseline.cache_name is None:
            return compute()
        key = (tuple(self.layer_names), config.reshape_transform, baseline.cache_name, tuple(self.mean.tolist()),
               tuple(self.std.tolist()), tuple(x.shape[1:]), x.dtype, x.device, config.autocast, channels_last)
        return BASELINE_FEATURES.get(self.model, key, compute)

    def _names(self) -> str:
        """The layer's name, or the layers' names, for messages."""
        return repr(self.layer_name) if not self.several_layers else str(self.layer_names)

    def _integrate(self, x, baseline, baseline_features, targets: Targets, rows, head):
        """([layer maps (B, T, h, w) per layer], path images redone in float32, [the embedded coarser
        rule's maps per layer] or None)."""
        device = x.device
        B, m, T = x.shape[0], self.config.steps, targets.per_image
        node_dtype = ops.accumulation_dtype(x.dtype)
        alphas = self.alphas.to(device, node_dtype)
        step_weights = self.step_weights.to(device, node_dtype)
        coarse_weights = None if self._coarse_weights is None else self._coarse_weights.to(device, node_dtype)
        layer_maps, coarse_maps, fallback = None, None, 0
        for images, steps in chunk_plan(B, m, rows):
            for autocast in _precisions(self.config.autocast):
                parts = self._chunk(x, baseline, baseline_features, targets, images, steps, alphas[steps],
                                    step_weights[steps], head, autocast,
                                    None if coarse_weights is None else coarse_weights[steps])
                if parts is not None:
                    parts, coarse_parts = parts
                    break
                fallback += (images.stop - images.start) * (steps.stop - steps.start)
            else:
                raise ValueError(f"the activations or gradients at layer {self._names()} contain NaN or infinite "
                                 f"values for images {images.start}..{images.stop - 1} (in {x.dtype}): the model "
                                 "produces them for these inputs or their path images")
            if layer_maps is None:
                layer_maps = [torch.zeros(B, T, *p.shape[2:], dtype=p.dtype, device=device) for p in parts]
                coarse_maps = None if coarse_parts is None else [torch.zeros_like(t) for t in layer_maps]
            for total, part in zip(layer_maps, parts):
                total[images] += part
            for total, part in zip(coarse_maps or (), coarse_parts or ()):
                total[images] += part
        return layer_maps, fallback, coarse_maps

    def _chunk(self, x, baseline, baseline_features, targets, images, steps, alphas, step_weights, head, autocast,
               coarse_weights=None):
        """([maps (n, T, h, w) per layer], [the same summed with coarse_weights] or None) of one chunk
        of path images, or None if a value was not finite."""
        forward_dtype = autocast or x.dtype
        channels_last = self._channels_last(x)
        with record_function("igcam::path"):
            if not self._method.walks_path:  # one point, the input itself, bit for bit
                path = _laid_out(x[images].to(forward_dtype), channels_last)
            else:
                path = ops.path_images(x[images], baseline.rows(images), alphas, dtype=forward_dtype,
                                       channels_last=channels_last, backend=self.config.backend)
        with record_function("igcam::forward"):
            kept, logits = self._forward(path, "features" if head is not None else "grad", autocast)
        activations = [self._to_maps(k.detach()) for k in kept]
        if head is None:
            self._check_logits(logits, path.shape[0])
            targets.check_range(logits.shape[1])
        r = steps.stop - steps.start
        A_base = [None] * len(activations)
        if baseline_features is not None:
            A_base = [(f if f.dim() == 3 else f[images]).to(a.dtype) for f, a in zip(baseline_features, activations)]
        finite = torch.stack([torch.isfinite(a).all() for a in activations]).all()
        parts = [[] for _ in activations]  # per layer, per target
        coarse = [[] for _ in activations]
        for column in range(targets.per_image):
            gradients = [None] * len(activations)
            weights = None
            if head is not None:  # one layer (a closed-form head is not used for several)
                classes = targets.indices[images, column].repeat_interleave(r)
                weights = head.channel_weights(classes, activations[0].shape[-2] * activations[0].shape[-1],
                                               ops.accumulation_dtype(activations[0].dtype), activations[0].device)
            else:
                with record_function("igcam::head_backward"):
                    gradients = self._gradients(targets.scores(logits, images, r, column), kept,
                                                retain=column + 1 < targets.per_image)
                finite = finite & torch.stack([torch.isfinite(g).all() for g in gradients]).all()
            with record_function("igcam::combine"):
                for layer_parts, layer_coarse, a, g, a_base in zip(parts, coarse, activations, gradients, A_base):
                    for out, w in ((layer_parts, step_weights), (layer_coarse, coarse_weights)):
                        if w is not None:  # the coarse rule: a second fused sum of the same path points
                            out.append(ops.combine(a, g, weights, a_base, w, weight_mode=self._method.weight_mode,
                                                   relu=self.config.relu, backend=self.config.backend))
        stacked = [torch.stack(layer_parts, dim=1) for layer_parts in parts]
        finite = finite & torch.stack([torch.isfinite(m).all() for m in stacked]).all()
        if not bool(finite):
            return None
        return stacked, (None if coarse_weights is None else [torch.stack(c, dim=1) for c in coarse])

    def precisions(self):
        """The forward precisions to try in turn for a chunk: fp16 overflows are redone in float32."""
        return _precisions(self.config.autocast)

    def _gradients(self, score, kept, retain: bool):
        """[∂score/∂(layer output) per layer], from one backward from the scores."""
        if not score.requires_grad:
            raise ValueError(f"the class scores do not depend on layer {self._names()}'s output: is the layer "
                             "connected to the model's output?")
        gradients = torch.autograd.grad(score, kept, retain_graph=retain, allow_unused=True)
        for name, gradient in zip(self.layer_names, gradients):
            if gradient is None:
                raise ValueError(f"the class scores do not depend on layer {name!r}'s output: is the layer "
                                 "connected to the model's output?")
        return [self._to_maps(g) for g in gradients]

    def _upsample(self, layer_maps, input_size):
        B, T, h, w = layer_maps.shape
        flat = layer_maps.reshape(B * T, h, w)
        if self.config.normalize:  # pytorch-grad-cam scales at layer resolution, resizes, then scales again
            flat = ops.minmax_scale(flat)
        if self.config.output_size == "layer":
            return flat.reshape(B, T, h, w)
        size = tuple(self.config.output_size or input_size)
        return ops.upsample(flat, size, normalize=self.config.normalize,
                            backend=self.config.backend).reshape(B, T, *size)


def _laid_out(images, channels_last: bool):
    """images in the channels_last or the standard contiguous layout. For one channel the two are
    both "contiguous", so the standard strides are made explicitly (a convolution reads the strides
    to choose its output's layout)."""
    if channels_last:
        return images.contiguous(memory_format=torch.channels_last)
    standard = torch.empty(images.shape, device="meta").stride()
    return images if images.stride() == standard else images.clone(memory_format=torch.contiguous_format)


def _autocast(device, dtype):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _precisions(autocast):
    """The precisions to try in turn: fp16 overflows are redone in float32; others are final."""
    return (autocast, None) if autocast == torch.float16 else (autocast,)


def _run(method, model, x, layer, targets, return_result, options):
    with CamEngine(model, layer, method=method, **options) as engine:
        return engine.explain(x, targets) if return_result else engine(x, targets)


def integrated_gradcam(model, x, layer, targets=None, *, return_result: bool = False, **options):
    """Integrated Grad-CAM maps of x (B, C, H, W) at ``layer``; options as :class:`CamConfig`.

    Returns (B, H, W) maps (B, T, H, W for several targets per image), or a :class:`CamResult`
    with return_result=True. Baseline features are cached per model between calls.
    """
    return _run("igcam", model, x, layer, targets, return_result, options)


def gradcam(model, x, layer, targets=None, *, return_result: bool = False, **options):
    """Grad-CAM through the same engine (m = 1 at the input; A' subtracted only if asked)."""
    return _run("gradcam", model, x, layer, targets, return_result, options)


def gradcampp(model, x, layer, targets=None, *, return_result: bool = False, **options):
    """Grad-CAM++ (pytorch-grad-cam's closed form) through the same engine."""
    return _run("gradcampp", model, x, layer, targets, return_result, options)
