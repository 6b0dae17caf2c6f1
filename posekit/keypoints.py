"""Keypoint metadata shared by data, export metadata and parity: names, skeleton, flip pairs, normalization."""

from __future__ import annotations

from posekit.paths import DEFAULT_COCO, DEFAULT_MPII, REPO  # noqa: F401  (stages still import them from here)

# Input normalization of every network here: RGB in [0, 1], then (x - mean) / std (ImageNet statistics).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# 0-based joint pairs, from the COCO person category's 1-based skeleton.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
COCO_UPPER_BODY = tuple(range(11))
# Per-keypoint OKS sigmas (pycocotools' defaults for COCO persons).
COCO_SIGMAS = (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
               0.89, 0.89)

MPII_KEYPOINTS = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist",
)
MPII_SKELETON = ((0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12),
                 (12, 7), (13, 7), (13, 14), (14, 15))
MPII_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
MPII_UPPER_BODY = (6, 7, 8, 9, 10, 11, 12, 13, 14, 15)


def keypoint_info(num_joints: int) -> dict:
    """Names, skeleton and flip pairs for a joint count (17: COCO, 16: MPII)."""
    if num_joints == 17:
        return {"dataset": "coco", "names": list(COCO_KEYPOINTS), "skeleton": [list(p) for p in COCO_SKELETON],
                "flip_pairs": [list(p) for p in COCO_FLIP_PAIRS]}
    if num_joints == 16:
        return {"dataset": "mpii", "names": list(MPII_KEYPOINTS), "skeleton": [list(p) for p in MPII_SKELETON],
                "flip_pairs": [list(p) for p in MPII_FLIP_PAIRS]}
    return {"dataset": "custom", "names": [f"joint_{i}" for i in range(num_joints)], "skeleton": [],
            "flip_pairs": []}
