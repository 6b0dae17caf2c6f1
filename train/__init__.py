"""train: top-down pose training and OKS-AP evaluation of an arch file (COCO keypoints, bundled coco-mini by
default), with atomic per-epoch checkpoints, --resume, best-by-AP, metrics.jsonl + curves.png and torchrun DDP."""
