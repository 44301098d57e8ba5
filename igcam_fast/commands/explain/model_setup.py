"""The model and the engine of a run, with the user's mistakes about them as one-line errors."""

from __future__ import annotations

import torch

from .options import DTYPES, ExplainError

#: How many candidate layers an error about --layer lists (the deepest ones, in forward order).
CANDIDATES_SHOWN = 8


def load_spec(args):
    """The ModelSpec of --model/--weights/--layer/--num-classes; ExplainError naming what is wrong."""
    from igcam_fast.models import load_model

    try:
        return load_model(args.model, args.weights, args.layer, num_classes=args.num_classes)
    except (ValueError, TypeError, ImportError, FileNotFoundError, AttributeError) as err:
        raise ExplainError(f"--model {args.model}: {err}") from None


def probe(model: torch.nn.Module, size: int) -> tuple[int, dict[str, tuple[int, ...]]]:
    """One forward of a black (1, 3, size, size) image: (number of classes, {module name: output shape})."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
                if isinstance(out, torch.Tensor) else None))
    try:
        with torch.no_grad():
            scores = model(torch.zeros(1, 3, size, size))
    except Exception as err:
        raise ExplainError(f"the model fails on a {size}x{size} input ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); check --input-size and --model") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ExplainError(f"--model {type(model).__name__} must return (N, classes) scores, got {got}")
    return int(scores.shape[1]), shapes


def check_layer(layer: str, shapes: dict[str, tuple[int, ...]], module_names) -> None:
    """ExplainError unless ``layer`` outputs (1, K, h, w) maps; the message lists layers that do."""
    candidates = [n for n, s in shapes.items() if len(s) == 4]
    shown = ", ".join(candidates[-CANDIDATES_SHOWN:]) or "none"
    if layer not in module_names:
        raise ExplainError(f"--layer {layer}: the model has no such module; layers with 4-D outputs: {shown}")
    if layer not in shapes:
        raise ExplainError(f"--layer {layer} is not called by the model's forward (or does not output a tensor); "
                           f"layers with 4-D outputs: {shown}")
    if len(shapes[layer]) != 4:
        raise ExplainError(f"--layer {layer} outputs {shapes[layer]}, not (N, K, h, w) feature maps; "
                           f"layers with 4-D outputs: {shown}")


def build_engine(spec, args):
    """The CamEngine of the run's method options (unset igcam options are left to the library)."""
    from igcam_fast.core.engine import CamEngine

    options = dict(method=args.method, preset=args.preset, rule=args.rule, steps=args.steps,
                   baseline=args.baseline, mean=spec.mean, std=spec.std, normalize=args.normalize,
                   output_size="layer" if args.resolution == "layer" else None,
                   batch_rows=args.batch_rows, autocast=DTYPES[args.dtype], tol=args.tol, max_steps=args.max_steps)
    if args.method != "igcam":
        for k in ("preset", "rule", "steps", "tol", "max_steps"):
            if options[k] is None:
                del options[k]
    try:
        return CamEngine(spec.model, spec.layer, **options)
    except (ValueError, TypeError) as err:
        raise ExplainError(str(err)) from None
