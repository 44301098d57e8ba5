"""Drop-in adapters of igcam_fast for other CAM / attribution libraries.

Each submodule imports its library only when imported itself, so none of them is a dependency
of igcam_fast:

    igcam_fast.compat.pytorch_grad_cam   IntegratedGradCAM, GradCAM, GradCAMPlusPlus (BaseCAM subclasses)
    igcam_fast.compat.captum             LayerIntegratedGradCam (a captum LayerAttribution)
    igcam_fast.compat.quantus            explain_func / make_explain_func for Quantus metrics

See docs/adapters.md for the one-line switches and what each adapter does and does not support.
"""

__all__ = ["pytorch_grad_cam", "captum", "quantus"]
