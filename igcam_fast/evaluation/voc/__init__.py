"""PASCAL VOC reading, the synthetic VOC-layout digits data set with its trained models, and the
benchmark that evaluates them (``python -m igcam_fast.commands.evaluate_synthetic``)."""

from igcam_fast.evaluation.voc.dataset import VOC_CLASSES, VocError, VocImage, VocObject, find_root, load_voc, parse_annotation, read_split

__all__ = ["VOC_CLASSES", "VocError", "VocImage", "VocObject", "find_root", "load_voc", "parse_annotation",
           "read_split"]
