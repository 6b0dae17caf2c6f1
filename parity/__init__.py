"""parity: every exported artifact against the PyTorch checkpoint it came from (numerically and by keypoints),
with a Core ML reference executor so Core ML artifacts are checked on Linux too."""
