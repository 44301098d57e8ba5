"""Images in and out: the bundled real photos with their boxes and the model input made from an
image file (photos.py), saliency overlays and the demo's figures (overlay.py), and the saturated-unit
example of why one integrates (saturation.py)."""
