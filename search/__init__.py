"""Differentiable architecture search steered by a device latency LUT (EfficientPose, arXiv 2012.07086, sec. 3).

`python -m search --device pixel` trains a supernet (a mixed op over the candidate blocks at every searchable
layer of a search space), alternating weight steps and architecture steps on two disjoint halves of the data, with
the loss  heatmap MSE + lambda * log_tau(expected latency)  and writes the argmax arch to
`runs/search/<device>/arch.yaml`. Modules: supernet (the network), cost (LUT / FLOPs tables), loop (the search),
derive (arch file), plots. The closed loop on a real runtime is `python -m demo closed-loop` (demo/closed_loop.py).
"""
