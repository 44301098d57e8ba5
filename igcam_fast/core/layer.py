"""What every explainer of one or several layers of one model shares: finding the layers, one forward
hook on each whose lifetime is the explainer's, the checks of an input batch and of the model's mode,
and the plan that cuts a call into forwards of at most ``rows`` images.

The hooks hold their explainer only weakly: an explainer that is dropped without ``close()`` is
garbage-collected and its hooks removed. What a hook does on a forward (nothing, capture, stop)
is per thread, so forwards that other threads run through the same model pass untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref

import torch
from torch import nn

from igcam_fast.core.config import default_batch_rows


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


def resolve_layers(model: nn.Module, layer) -> list[tuple[str, nn.Module]]:
    """The (name, module) of each layer: ``layer`` is one layer (a dotted name or a module) or a
    non-empty list or tuple of them, each once."""
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("layer: an empty list; give one layer or a list of layers")
        resolved = [resolve_layer(model, item) for item in layer]
        names = [name for name, _ in resolved]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"layer: {repeated} given more than once; give each layer once")
        return resolved
    return [resolve_layer(model, layer)]


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


# ---- modules whose forward depends on the training flag ------------------------------------------

#: torch.nn modules that behave differently in training mode (statistics, randomness).
_TRAINING_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.RReLU)
_DROPOUTS = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)
_FORWARD_READS_TRAINING: dict[type, bool] = {}


def _depends_on_training(module: nn.Module) -> bool:
    """Whether module's own forward reads the training flag.

    torch.nn's modules: those in a known list (BatchNorm, InstanceNorm with running statistics,
    dropouts with p > 0, RReLU, attention with dropout). Any other class: its forward's source mentions
    ``training`` (EfficientNet's drop-connect, torchvision's StochasticDepth), or its source cannot
    be read — then it is assumed to depend on it.
    """
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.track_running_stats
    if isinstance(module, _TRAINING_DEPENDENT):
        return True
    if isinstance(module, _DROPOUTS):
        return module.p > 0
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    cls = type(module)
    if cls.__module__.startswith("torch.nn."):
        return False
    if cls not in _FORWARD_READS_TRAINING:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = "training"
        _FORWARD_READS_TRAINING[cls] = "training" in source
    return _FORWARD_READS_TRAINING[cls]


def training_dependent_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every module in training mode whose forward depends on it."""
    return [(name or "<model>", m) for name, m in model.named_modules() if m.training and _depends_on_training(m)]


@contextlib.contextmanager
def restored_running_statistics(model: nn.Module):
    """Put every normalisation layer's running statistics back as they were after the block."""
    saved = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in model.modules() if isinstance(m, (nn.modules.batchnorm._NormBase,))]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


# ---- the explainer base ---------------------------------------------------------------------------


class HookState(threading.local):
    """What the hooks do on this thread's next forward, and what they caught."""

    mode = None  # None: pass; otherwise the subclass's mode name
    captured = None  # the subclass's own use
    outputs: list = []  # per layer: what the hook kept of the layer's output in this forward
    calls: list = []  # per layer: how often it ran in the current forward


def _weak_hook(explainer: "LayerExplainer", index: int):
    ref = weakref.ref(explainer)

    def hook(module, inputs, output):
        owner = ref()
        if owner is None or owner._state.mode is None:
            return None
        owner._state.calls[index] += 1
        return owner._on_layer_output(module, inputs, output, index)

    return hook


class LayerExplainer:
    """The model and its layer (or layers), one forward hook on each (removed by :meth:`close`, the
    context manager, or when the explainer is garbage-collected), and the checks of an input batch.
    Subclasses implement ``_on_layer_output(module, inputs, output, index)`` (index: which of the
    layers) and read ``self._state``. ``layer_name``/``layer`` are the first (or only) layer's.
    """

    def __init__(self, model: nn.Module, layer, *, batch_rows: int | None = None, allow_training: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if batch_rows is not None and (isinstance(batch_rows, bool) or not isinstance(batch_rows, int)
                                       or batch_rows < 1):
            raise ValueError(f"batch_rows must be a positive int, got {batch_rows!r}")
        self.model = model
        resolved = resolve_layers(model, layer)
        self.layer_names = [name for name, _ in resolved]
        self.layers = [module for _, module in resolved]
        self.layer_name, self.layer = resolved[0]
        self.batch_rows = batch_rows
        self.allow_training = allow_training
        self._state = HookState()
        hooks = [module.register_forward_hook(_weak_hook(self, index)) for index, module in enumerate(self.layers)]
        self._finalizer = weakref.finalize(self, _remove_all, hooks)

    def _on_layer_output(self, module, inputs, output, index: int):
        raise NotImplementedError

    def rows(self, device) -> int:
        """Rows (images or path images) per forward on ``device``."""
        return self.batch_rows or default_batch_rows(device)

    def close(self) -> None:
        """Remove the hooks from the model. Idempotent."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _hooked(self, mode):
        """Run a forward with the hook in ``mode`` on this thread; the mode is cleared afterwards."""
        if not self._finalizer.alive:
            raise RuntimeError(f"this {type(self).__name__} was closed: its hook on {self.layer_name!r} is removed")
        state = self._state
        state.mode, state.captured = mode, None
        state.outputs, state.calls = [None] * len(self.layers), [0] * len(self.layers)
        try:
            yield state
        finally:
            state.mode = None

    def _check_called_once(self, state) -> None:
        for name, calls in zip(self.layer_names, state.calls):
            if calls == 0:
                raise ValueError(f"layer {name!r} was not called during the forward pass")
            if calls > 1:
                raise ValueError(f"layer {name!r} was called {calls} times in one forward (a module used at several "
                                 "places, e.g. one shared ReLU): its activations are ambiguous. Hook a module that "
                                 "runs once, such as the block or convolution before it")

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
        if not self.allow_training:
            offenders = training_dependent_modules(self.model)
            if offenders:
                name, module = offenders[0]
                more = f" (and {len(offenders) - 1} more)" if len(offenders) > 1 else ""
                raise RuntimeError(f"module {name!r} ({type(module).__name__}) is in training mode{more}: its output "
                                   "would depend on the batch or on chance, and so would the map. Call model.eval() "
                                   "first (or pass allow_training=True)")

    def _training_guard(self):
        """Running statistics restored after a call that explains a training-mode model."""
        if any(m.training for m in self.model.modules()):
            return restored_running_statistics(self.model)
        return contextlib.nullcontext()


def _remove_all(handles) -> None:
    for handle in handles:
        handle.remove()
