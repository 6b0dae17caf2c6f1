"""parity: every exported artifact against the PyTorch checkpoint it came from (numerically and by keypoints), run
through runtime/ (Core ML artifacts through its reference executor on Linux)."""
