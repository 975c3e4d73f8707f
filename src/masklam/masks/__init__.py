"""Agent masks for a dataset: `masklam masks` (`command`), zero-shot from a box prompt on frame 0.

`command` is the CLI; `store` writes masks into a dataset file resumably (part files, one merge) and sizes the
box prompt; `iou` scores masks against the simulator's. The segmenters: `sam2` (SAM 2 video model through
transformers, imported only when a model is loaded, so importing this package stays cheap), `mobilesam`
(+ `weights` to fetch it), and `distill` / `student` (MobileSAM labels a few frames, a small U-Net the rest).
"""
from masklam.masks.command import MasksConfig, add_masks
from masklam.masks.iou import mask_iou
from masklam.masks.store import TASK_BOXES, default_box

__all__ = ["TASK_BOXES", "MasksConfig", "add_masks", "default_box", "mask_iou"]
