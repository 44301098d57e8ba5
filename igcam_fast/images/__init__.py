"""Images in and out: the bundled real photos with their boxes, and saliency overlays."""
