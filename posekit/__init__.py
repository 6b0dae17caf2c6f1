"""Shared pipeline utilities that are not network code: atomic file IO, CLI error handling, COCO data,
heatmap encoding/decoding and OKS evaluation. Imports no stage."""
