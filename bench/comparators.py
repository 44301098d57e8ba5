"""The other libraries and procedures timed against ours, each as a zero-argument callable on
fixed inputs (our own engine and the forward-only floor are igcam_fast.benchmarking.latency's
engine_call and forward_floor, the providers ``igcam-fast bench`` times):

    reference          igcam_fast.core.reference.reference_integrated_gradcam (slow, loop per step)
    authors_procedure  the authors' demo re-implemented: host-side Python loop for the path, one
                       batched forward + backward with a TorchRay-style probe and frozen
                       parameters, numpy sum and host resize
    pgc_composed       pytorch-grad-cam's GradCAM on the stacked path images, averaged
    pgc_gradcam        pytorch-grad-cam's GradCAM on the images (the one-step cost)

    captum_composed    captum's LayerGradCam on the stacked path images, summed
    pgc_adapter_gradcam  our pytorch-grad-cam adapter, the same call as upstream

Every builder returns a callable; construction (hooks, explainers, frozen inputs) happens outside
the timed region. usable_backends / backend_reasons say which fused-op backends can run here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from igcam_fast import ops
from igcam_fast.core.quadrature import path_nodes
from igcam_fast.core.reference import reference_integrated_gradcam
from igcam_fast.benchmarking.latency import black_image


def _module(model: nn.Module, layer: str) -> nn.Module:
    """The module named ``layer`` (a dotted name) in model."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of the model")
    return modules[layer]


# ---- the float64-capable reference ---------------------------------------------------------------


def reference(model: nn.Module, layer: str, x: torch.Tensor, targets, *, steps=8, rule="right", mean=None,
              std=None):
    """reference_integrated_gradcam in the model's dtype: one image, one path point per pass."""
    module = _module(model, layer)
    base = black_image(x, mean, std)
    targets = [int(t) for t in targets]

    def run():
        out = reference_integrated_gradcam(model, x, module, targets, steps=steps, rule=rule, baseline=base,
                                           output_size=x.shape[-2:])
        model.zero_grad(set_to_none=True)  # it fills parameter gradients; don't keep them around
        return out

    return run


# ---- the authors' demo procedure ------------------------------------------------------------------


class _Probe:
    """TorchRay's Probe on a layer's output: make it require grad and retain its gradient."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.data = None
        self.inplace = getattr(module, "inplace", None)
        if self.inplace is not None:
            module.inplace = False
        self.hook = module.register_forward_hook(self._catch)

    def _catch(self, module, inputs, output):
        output.requires_grad_(True)
        output.retain_grad()
        self.data = output

    def remove(self):
        self.hook.remove()
        if self.inplace is not None:
            self.module.inplace = self.inplace


def _host_resize(saliency: np.ndarray, size) -> np.ndarray:
    # The demo resizes with cv2.resize (bilinear) on the host; PIL's bilinear on float images is
    # the same kind of host-side work (cv2 is not a dependency here).
    return np.asarray(Image.fromarray(saliency.astype(np.float32), mode="F").resize((size[1], size[0]),
                                                                                      Image.BILINEAR))


def authors_procedure(model: nn.Module, layer: str, x: torch.Tensor, targets, *, steps=50):
    """The authors' demo, faithfully: for each image, a zero (model-space) baseline, α_i = i/m for
    i = 0..m-1 built in a Python loop on the host, one batched forward and backward of all m
    images with the parameters frozen and a probe on the layer, the Grad-CAM map of each row,
    numpy sum over the rows and a host-side bilinear resize.
    """
    module = _module(model, layer)
    device = x.device
    H, W = x.shape[-2:]
    x_host = x.detach().cpu()
    targets = [int(t) for t in targets]

    def explain_one(image, target):
        stack = torch.zeros((steps, *image.shape))
        baseline = image * 0.0
        for i in range(steps):
            stack[i] = baseline + (image - baseline) * (i / steps)
        stack = stack.to(device)
        saved = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        probe = _Probe(module)
        try:
            output = model(stack)
            gradient = torch.zeros_like(output)
            gradient[:, target] = 1.0
            output.backward(gradient)
            A = probe.data
            weights = A.grad.mean(dim=(2, 3), keepdim=True)
            saliency = (A * weights).sum(1, keepdim=True).clamp(min=0)
        finally:
            probe.remove()
            for name, p in model.named_parameters():
                p.requires_grad_(saved[name])
        summed = np.sum(saliency.cpu().detach().numpy(), axis=0)
        return _host_resize(summed[0], (H, W))

    def run():
        with torch.enable_grad():
            return np.stack([explain_one(x_host[b], targets[b]) for b in range(x_host.shape[0])])

    return run


# ---- pytorch-grad-cam and captum ----------------------------------------------------------------------------


def stacked_path(x, base, alphas):
    """The (B·m, C, H, W) path images as a user composing another library builds them: plain ops."""
    stack = base + alphas.to(x.device, x.dtype)[None, :, None, None, None] * (x[:, None] - base)
    return stack.reshape(-1, *x.shape[1:])


def pgc_available() -> str | None:
    """None when pytorch-grad-cam imports, else why not."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError as err:
        return f"pytorch-grad-cam is not installed ({err})"
    return None


def pgc_composed(model: nn.Module, layer: str, x: torch.Tensor, targets, *, steps=50, rule="right", mean=None,
                 std=None):
    """What a user composes today: GradCAM on the stacked B·m path images, averaged over the steps.

    The CAM object is built per call (its hooks copy activations on every forward, so it must not
    stay attached while the other providers run); building it costs microseconds.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = _module(model, layer)
    alphas, weights = path_nodes(rule, steps)
    base = black_image(x, mean, std)
    B = x.shape[0]
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets for _ in range(steps)]

    def run():
        stack = stacked_path(x, base, alphas)
        with GradCAM(model=model, target_layers=[module]) as cam:
            maps = cam(input_tensor=stack, targets=cam_targets)
        model.zero_grad(set_to_none=True)
        return np.tensordot(maps.reshape(B, steps, *maps.shape[1:]), weights.numpy(), axes=([1], [0]))

    return run


def captum_available() -> str | None:
    """None when captum imports, else why not."""
    try:
        import captum  # noqa: F401
    except ImportError as err:
        return f"captum is not installed ({err})"
    return None


def captum_composed(model: nn.Module, layer: str, x: torch.Tensor, targets, *, steps=50, rule="right", mean=None,
                    std=None):
    """What a captum user composes today: LayerGradCam on the stacked B·m path images (one batched
    call, gradients w.r.t. the layer only), ReLU per path point, weighted sum over the steps."""
    from captum.attr import LayerGradCam

    module = _module(model, layer)
    alphas, weights = path_nodes(rule, steps)
    base = black_image(x, mean, std)
    B = x.shape[0]
    target = torch.as_tensor(targets, dtype=torch.int64).repeat_interleave(steps).tolist()
    explainer = LayerGradCam(model, module)

    def run():
        maps = explainer.attribute(stacked_path(x, base, alphas), target=target, relu_attributions=True)
        maps = maps.reshape(B, steps, *maps.shape[2:])
        return torch.einsum("bthw,t->bhw", maps, weights.to(maps.device, maps.dtype))

    return run


def pgc_adapter_gradcam(model: nn.Module, layer: str, x: torch.Tensor, targets):
    """igcam_fast.compat.pytorch_grad_cam.GradCAM: the one-import switch, same call as upstream."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from igcam_fast.compat.pytorch_grad_cam import GradCAM

    module = _module(model, layer)
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    cam = GradCAM(model, [module])

    def run():
        return cam(input_tensor=x, targets=cam_targets)

    return run


def pgc_gradcam(model: nn.Module, layer: str, x: torch.Tensor, targets):
    """pytorch-grad-cam's plain GradCAM of the B images."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = _module(model, layer)
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]

    def run():
        with GradCAM(model=model, target_layers=[module]) as cam:
            maps = cam(input_tensor=x, targets=cam_targets)
        model.zero_grad(set_to_none=True)
        return maps

    return run


# ---- backends ---------------------------------------------------------------------------------------


def backend_reasons(name: str, device: torch.device, dtypes) -> list[str]:
    """Why backend ``name`` cannot run here (empty: it can)."""
    try:
        return ops.get_backend(name).reasons(torch.device(device), list(dtypes))
    except Exception as err:  # unknown, or broken while being written
        return [f"{type(err).__name__}: {err}"]


def usable_backends(device: torch.device, dtype=torch.float32, names=None) -> tuple[list[str], dict[str, str]]:
    """(usable backend names, {unusable name: reasons}) for ops on this device and dtype."""
    device = torch.device(device)
    order = list(names) if names is not None else ["cuda", "triton", "cpu", "torch"]
    usable, skipped = [], {}
    for name in order:
        why = backend_reasons(name, device, [dtype])
        if why:
            skipped[name] = "; ".join(why)
        else:
            usable.append(name)
    return usable, skipped


__all__ = ["reference", "authors_procedure", "pgc_composed", "pgc_gradcam", "pgc_available", "captum_available",
           "captum_composed", "pgc_adapter_gradcam", "usable_backends", "backend_reasons", "stacked_path"]
