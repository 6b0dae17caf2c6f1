"""Top-down geometry: person box -> (center, scale) -> affine crop of the network input, and back.

`scale` is the (w, h) in image pixels of the region that fills the network input (already padded by 1.25 and at
the input's aspect ratio), not HRNet's "/200" unit. Coordinates use pixel centres (pixel i is at i), as cv2 does.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from posekit.errors import UserError
from posekit.keypoints import MEAN, STD

PADDING = 1.25  # the usual context around a person box (SimpleBaseline / HRNet)


def box_to_center_scale(box, input_size, padding: float = PADDING):
    """COCO box (x, y, w, h) -> center (2,), scale (2,) = padded (w, h) at the input's aspect ratio (H, W)."""
    x, y, w, h = (float(v) for v in box)
    aspect = input_size[1] / input_size[0]
    center = np.array([x + w * 0.5, y + h * 0.5], np.float32)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float32) * padding


def fit_aspect(scale, input_size):
    """Grow (w, h) to the input's aspect ratio (H, W) without cropping."""
    w, h = float(scale[0]), float(scale[1])
    aspect = input_size[1] / input_size[0]
    return np.array([max(w, h * aspect), max(h, w / aspect)], np.float32)


def get_affine(center, scale, input_size, rot: float = 0.0, flip: bool = False) -> np.ndarray:
    """2x3 matrix mapping image pixels to input pixels: `center` -> the input centre, `scale` (w, h) -> (W, H),
    rotated by `rot` degrees (counter-clockwise in the image), then mirrored left-right when `flip`."""
    H, W = input_size
    a = np.deg2rad(rot)
    rotm = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    A = np.diag([W / float(scale[0]), H / float(scale[1])]) @ rotm
    t = np.array([(W - 1) / 2, (H - 1) / 2]) - A @ np.asarray(center, np.float64)
    M = np.concatenate([A, t[:, None]], 1)
    if flip:
        M = np.array([[-1.0, 0, W - 1], [0, 1, 0]]) @ np.vstack([M, [0, 0, 1]])
    return M


def apply_affine(points, M) -> np.ndarray:
    """(..., 2) points through a 2x3 matrix."""
    p = np.asarray(points, np.float64)
    return p @ M[:, :2].T + M[:, 2]


def invert_affine(M) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(M, np.float64))


def truncation(data: bytes, tail_only: bool = False) -> str | None:
    """Why these image bytes are cut short, or None. libjpeg decodes a truncated JPEG without an error (grey rows
    and a bare "Premature end of JPEG file" on stderr), so look for the end-of-image marker FFD9 after the last
    start-of-scan FFDA (entropy-coded data never holds FF D9: FF is byte-stuffed), and for PNG's IEND chunk.
    tail_only: `data` is the file's last bytes only (a cheap check; None means "look at the whole file")."""
    if data[:2] == b"\xff\xd8" or tail_only and data[:1] != b"\x89":
        if b"\xff\xd9" in data.rstrip(b"\0\r\n ")[-2:]:
            return None
        if tail_only:
            return "check"
        sos = data.rfind(b"\xff\xda")
        return None if sos >= 0 and data.find(b"\xff\xd9", sos) >= 0 else "truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" or tail_only:
        return None if b"IEND" in data[-64:] else "truncated PNG (no IEND chunk)"
    return None


def image_problem(path) -> str | None:
    """Why an image file cannot be used ("missing", "empty", "truncated JPEG ..."), or None. Reads the file's head
    and tail only, unless a JPEG has data after its end marker."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size == 0:
            return "empty"
        with open(p, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError:
        return "missing"
    if head[:2] == b"\xff\xd8":
        if truncation(tail, tail_only=True) is None:
            return None
        return truncation(p.read_bytes())
    if head == b"\x89PNG\r\n\x1a\n":
        return truncation(head + tail[-64:])
    return None


# An image larger than this is refused from its header, before decoding (a 20000x20000 JPEG is 1.2 GB of pixels;
# a phone photo is 12-50 MP). predict --max-pixels raises it.
MAX_PIXELS = 100_000_000


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the image's header states it, read by Pillow without decoding; None when Pillow does not
    know the format (OpenCV may still)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # Pillow's own bomb check: the caller decides
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3); an unreadable or truncated file, or one whose header states more than `max_pixels`
    pixels (checked before decoding), is a UserError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = b""
    why = truncation(data) if data else "missing, unreadable or empty"
    size = header_size(data) if why is None else None
    if size is not None and size[0] * size[1] > max_pixels:
        raise UserError(f"{path}: the image header says {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more "
                        f"than the {max_pixels:,} allowed (predict --max-pixels raises it)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if why is None else None
    if img is None:
        raise UserError(f"{path}: cannot read image ({why or 'not an image'})")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def normalize(rgb_uint8) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W): [0, 1], then ImageNet mean/std (posekit.keypoints)."""
    x = rgb_uint8.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_image_crop(path_or_array, center, scale, input_size, rot: float = 0.0, flip: bool = False):
    """The network input for one person, exactly as the data pipeline makes it.

    path_or_array: an image file, or an RGB uint8 array (H, W, 3). center/scale: from `box_to_center_scale`.
    Returns (normalized float32 (3, H, W), affine 2x3 image->input); `to_image` undoes the affine for keypoints.
    """
    img = read_image(path_or_array) if isinstance(path_or_array, (str, Path)) else np.asarray(path_or_array)
    M = get_affine(center, scale, input_size, rot, flip)
    H, W = input_size
    crop = cv2.warpAffine(img, M, (int(W), int(H)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return normalize(crop), M


def to_image(coords_input, M) -> np.ndarray:
    """Input-pixel coordinates (..., 2) of a crop made with affine M -> image coordinates."""
    return apply_affine(coords_input, invert_affine(M))
