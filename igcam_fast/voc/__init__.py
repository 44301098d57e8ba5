"""PASCAL VOC reading, the synthetic VOC-layout digits data set with its trained models, and the
benchmark that evaluates them (``python -m igcam_fast.voc.benchmark``)."""

from .dataset import VOC_CLASSES, VocError, VocImage, VocObject, find_root, load_voc, parse_annotation, read_split

__all__ = ["VOC_CLASSES", "VocError", "VocImage", "VocObject", "find_root", "load_voc", "parse_annotation",
           "read_split"]
