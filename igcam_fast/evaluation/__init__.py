"""Judging explanations: the paper's metrics, the comparison methods (Score-CAM, Ablation-CAM)
and the data they run on (the PASCAL VOC reader, the generated VOC-layout data set)."""
