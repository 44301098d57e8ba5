"""What several commands check the same way: the device, the model spec and the target layer.

Each helper turns an ordinary mistake into a :class:`~igcam_fast.commands.CommandError` (one line,
exit status 2) that says what was wrong and what to give instead.
"""

from __future__ import annotations

import sys
import warnings

import torch

from igcam_fast.commands import CommandError

DEVICE_HELP = "where to run: cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(text: str, *, need_gpu: bool = True) -> torch.device:
    """``--device`` as a torch.device; a malformed name, or (with need_gpu) a CUDA device this
    machine does not have, is a CommandError."""
    name = str(text).strip().lower()
    if name in ("gpu", "nvidia"):
        raise CommandError(f"--device {text}: write cuda (or cuda:N) for an NVIDIA GPU, or cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device {text} is not a device name: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise CommandError(f"--device {text}: only cpu and cuda devices are supported")
    if need_gpu and device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {text}: no CUDA GPU is visible here (torch {torch.__version__}, "
                               f"CUDA {torch.version.cuda or 'not built in'}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_model_or_explain(command: str, spec: str, weights=None, layer=None, **kwargs):
    """:func:`igcam_fast.models.load_model`, with its mistakes as one-line CommandErrors and its
    warnings (random weights, ...) printed as one line each: ``igcam-fast <command>: warning: ...``."""
    from igcam_fast.models import load_model

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = load_model(spec, weights, layer, **kwargs)
    except ModuleNotFoundError as err:
        raise CommandError(f"--model {spec}: cannot import {err.name!r} ({err}); for module:factory the module "
                           "must be importable (on PYTHONPATH)") from None
    except (ValueError, TypeError, ImportError, FileNotFoundError, RuntimeError) as err:
        raise CommandError(f"--model {spec}: {err}") from None
    for w in caught:
        print(f"igcam-fast {command}: warning: {w.message}", file=sys.stderr, flush=True)
    return result


def check_layer(spec) -> None:
    """Refuse a target layer that is not a module of the model or does not output (N, K, h, w) maps,
    listing the layers that do (with their shapes at the model's input size)."""
    from igcam_fast.models import layers_with_4d_outputs

    candidates = layers_with_4d_outputs(spec.model, spec.input_size)
    if spec.layer in candidates:
        return
    modules = dict(spec.model.named_modules())
    why = "is not a module of the model" if spec.layer not in modules else "does not output a 4-D (N, K, h, w) tensor"
    last = list(candidates.items())[-8:]
    listing = ", ".join(f"{name} {tuple(shape[1:])}" for name, shape in last)
    more = f" (the last {len(last)} of {len(candidates)})" if len(candidates) > len(last) else ""
    raise CommandError(f"--layer {spec.layer!r} {why}; layers with 4-D outputs{more}: {listing}")
