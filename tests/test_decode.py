"""The in-graph keypoint decode (model/decode.py) against the Python decode (posekit.heatmap), and its lowerings."""

import numpy as np
import pytest
import torch

from model.decode import KeypointDecode
from posekit.heatmap import decode, heatmap_to_input


def _python_keypoints(hm: np.ndarray) -> np.ndarray:
    c, v = decode(hm)
    return np.concatenate([heatmap_to_input(c), v], -1)


def _maps() -> torch.Tensor:
    """Random maps plus the rule's corner cases: peaks on each border and corner, ties (first maximum wins), equal
    neighbours (no shift), an all-equal map."""
    g = torch.Generator().manual_seed(0)
    hm = torch.rand(3, 17, 16, 12, generator=g)
    hm[1] = (hm[1] * 6).round() / 6  # many ties
    for j, (y, x) in enumerate([(0, 0), (15, 11), (0, 5), (15, 5), (7, 0), (7, 11)]):
        hm[2, j] = 0
        hm[2, j, y, x] = 1
    hm[2, 6] = 0.5
    hm[2, 7] = 0
    hm[2, 7, 5, 5] = 1
    hm[2, 7, 5, 4] = hm[2, 7, 5, 6] = 0.5  # equal neighbours in x: no x shift
    return hm


def test_decode_module_equals_python_decode_exactly():
    hm = _maps()
    _, kp = KeypointDecode(torch.nn.Identity(), (64, 48))(hm)
    assert np.array_equal(kp.numpy(), _python_keypoints(hm.numpy()).astype(np.float32))


@pytest.mark.parametrize("kw", [{"stride": 8}, {"shift": 0.0}])
def test_a_wrong_decode_differs(kw):
    hm = _maps()
    _, kp = KeypointDecode(torch.nn.Identity(), (64, 48), **kw)(hm)
    assert np.abs(kp.numpy()[..., :2] - _python_keypoints(hm.numpy())[..., :2]).max() >= 0.9
