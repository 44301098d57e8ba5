"""igcam_fast: fast Integrated Grad-CAM (Sattarzadeh et al., ICASSP 2021).

    from igcam_fast import integrated_gradcam
    maps = integrated_gradcam(model.eval(), x, "layer4")         # (B, H, W)

See README.md for the method, the defaults and their measured cost and accuracy.
"""

from igcam_fast.core.baseline import clear_baseline_features
from igcam_fast.core.config import DEFAULT_RULE, DEFAULT_STEPS, PRESETS, CamConfig
from igcam_fast.core.engine import CamEngine, CamResult, gradcam, gradcampp, integrated_gradcam
from igcam_fast.core.methods import METHODS
from igcam_fast.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, attach_preprocessing, preprocessing_of
from igcam_fast.core.quadrature import RULES, path_nodes
from igcam_fast.ops import explain_backends

#: The class form of integrated_gradcam: keeps its hook and cached baseline features.
IntegratedGradCAM = CamEngine

__all__ = [
    "integrated_gradcam", "gradcam", "gradcampp", "CamEngine", "IntegratedGradCAM", "CamResult", "CamConfig",
    "path_nodes", "RULES", "PRESETS", "METHODS", "DEFAULT_RULE", "DEFAULT_STEPS", "IMAGENET_MEAN",
    "IMAGENET_STD", "attach_preprocessing", "preprocessing_of", "clear_baseline_features", "explain_backends",
]
__version__ = "0.1.0"
