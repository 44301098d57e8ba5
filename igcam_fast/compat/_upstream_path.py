"""pytorch-grad-cam's own code path, for what the fused engine cannot honour.

Used by :mod:`igcam_fast.compat.pytorch_grad_cam` when a subclass overrides one of BaseCAM's
extension points (``get_cam_weights``, ``get_cam_image``, ...), for ``eigen_smooth=True`` and
for 3-D inputs. It runs as upstream runs: an ``ActivationsAndGradients`` on the target layers,
a backward through the whole model, numpy on the host — with upstream's costs.

For Integrated Grad-CAM the same steps run at every path point γ(α_t) = x' + α_t (x − x'):

    cam_l = Σ_t ω_t ReLU(get_cam_image(γ(α_t), layer_l, targets, A_l(α_t) − A_l(x'), ∂y/∂A_l(α_t)))

then upstream's per-layer ReLU, min-max and resize, and ``aggregate_multi_layers``. With
``eigen_smooth=True`` the integrated weighted activations

    P_l = Σ_t ω_t w_l(α_t)[:, :, None, None] · (A_l(α_t) − A_l(x'))       (N, K, h, w)

with w from ``get_cam_weights``, are projected on their first principal component
(upstream's ``get_2d_projection``) instead of summed over the channels.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


def callable_targets(targets):
    """Upstream's target form: None or one callable per image (ints become ClassifierOutputTarget)."""
    if targets is None:
        return None
    if isinstance(targets, torch.Tensor):
        targets = targets.reshape(-1).tolist()
    return [ClassifierOutputTarget(int(t)) if isinstance(t, (int, np.integer)) else t for t in targets]


def keep_lists_release(activations_and_grads) -> None:
    """Remove an ActivationsAndGradients' hooks but keep its lists (upstream's release empties them)."""
    for handle in activations_and_grads.handles:
        handle.remove()
    activations_and_grads.handles.clear()


def upstream_forward(cam, x: torch.Tensor, targets, eigen_smooth: bool) -> np.ndarray:
    """Upstream's BaseCAM.forward on ``cam`` (whose activations_and_grads must be hooked); unlike
    upstream, no parameter gradients are left behind."""
    try:
        return BaseCAM.forward(cam, x, targets, eigen_smooth)
    finally:
        cam.model.zero_grad(set_to_none=True)


def _layer_outputs(cam, images: torch.Tensor, targets):
    """One upstream forward (and backward when targets are given): per-layer numpy (acts, grads)."""
    aag = cam.activations_and_grads
    if targets is None:
        outputs = aag(images)
        return outputs, [a.numpy() for a in aag.activations], None
    images = images.detach().requires_grad_(True)
    outputs = aag(images)
    loss = sum(target(output) for target, output in zip(targets, outputs))
    # upstream's loss.backward(), but into the input only: the layers' gradient hooks fire on the
    # way, and no parameter gradient is computed or left behind
    loss.backward(inputs=[images])
    return outputs, [a.numpy() for a in aag.activations], [g.numpy() for g in aag.gradients]


def integrated_upstream_forward(cam, engine, x: torch.Tensor, targets, eigen_smooth: bool,
                                custom_cam_image: bool) -> np.ndarray:
    """Integrated Grad-CAM through upstream's extension points; np.float32 (B, H, W) in [0, 1].

    ``engine`` supplies the nodes α_t, the weights ω_t, the baseline x' and whether A(x') is
    subtracted, so that this path and the fused one compute the same quantity.
    """
    if eigen_smooth and custom_cam_image:
        raise NotImplementedError(
            f"{type(cam).__name__} overrides get_cam_image: eigen_smooth=True needs the per-channel weighted "
            "activations of every path point, which an overridden get_cam_image does not expose. Use "
            "eigen_smooth=False, or override get_cam_weights instead.")
    B = x.shape[0]
    alphas = engine.alphas.tolist()
    step_weights = engine.step_weights.tolist()
    base = engine.baseline_image(x)  # the engine's rule for x' (C, H, W) or (B, C, H, W)
    base = base.expand_as(x) if base.dim() == 3 else base
    layers = cam.target_layers
    with torch.no_grad():
        logits = cam.model(x)
    cam.outputs = logits
    if targets is None:
        targets = [ClassifierOutputTarget(int(c)) for c in logits.argmax(dim=-1).tolist()]
    if engine.subtract_baseline:
        with torch.no_grad():
            _, base_acts, _ = _layer_outputs(cam, base, None)
    else:
        base_acts = [0.0] * len(layers)
    sums = [0.0] * len(layers)
    per_step = [([], []) for _ in layers]  # activations and gradients of every path point, per layer
    for alpha, weight in zip(alphas, step_weights):
        path = (base + alpha * (x - base)).detach()
        _, acts, grads = _layer_outputs(cam, path, targets)
        for i, layer in enumerate(layers):
            per_step[i][0].append(acts[i])
            per_step[i][1].append(grads[i])
            delta = acts[i] - base_acts[i]
            if eigen_smooth:
                w = cam.get_cam_weights(path, layer, targets, delta, grads[i])
                sums[i] = sums[i] + weight * (w[:, :, None, None] * delta)
            else:
                step_map = cam.get_cam_image(path, layer, targets, delta, grads[i], False)
                sums[i] = sums[i] + weight * (np.maximum(step_map, 0) if engine.relu else step_map)
    # what upstream's ActivationsAndGradients would hold after a forward on the stacked path images
    aag = cam.activations_and_grads
    m = len(alphas)
    aag.activations = [torch.from_numpy(np.stack(a, axis=1).reshape(B * m, *a[0].shape[1:])) for a, _ in per_step]
    aag.gradients = [torch.from_numpy(np.stack(g, axis=1).reshape(B * m, *g[0].shape[1:])) for _, g in per_step]
    target_size = cam.get_target_width_height(x)
    cam_per_layer = []
    for total in sums:
        layer_map = get_2d_projection(np.float32(total)) if eigen_smooth else np.float32(total)
        cam_per_layer.append(scale_cam_image(np.maximum(layer_map, 0), target_size)[:, None, :])
    return np.float32(cam.aggregate_multi_layers(cam_per_layer))
