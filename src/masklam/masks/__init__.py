"""Agent masks from SAM 2 (zero-shot, box prompt on frame 0, propagated): `masklam masks`.

`segmenter` holds the model side (loading local weights, preprocessing, propagation); `sam2` the dataset
side (the command, resumable in-place writing, IoU against simulator masks). transformers is imported only
when a model is loaded, so importing this package stays cheap.
"""
from masklam.masks.sam2 import TASK_BOXES, MasksConfig, add_masks, default_box, mask_iou

__all__ = ["TASK_BOXES", "MasksConfig", "add_masks", "default_box", "mask_iou"]
