"""Control maps for ControlNets: canny edges (numpy/scipy), raw maps, and controlnet-aux's detectors when present."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dreamcli.errors import InputError

CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's and OpenCV's usual thresholds, on 0-255 gradient magnitudes
# Types through controlnet-aux: dream's TYPE -> (the controlnet-aux class, A1111's module name). Their weights
# come from the lllyasviel/Annotators repo on the hub (MiDaS, OpenPose, ...), which must be cached first.
AUX_DETECTORS = {
    "depth": ("MidasDetector", "depth_midas"),
    "openpose": ("OpenposeDetector", "openpose"),
    "lineart": ("LineartDetector", "lineart_realistic"),
    "softedge": ("HEDdetector", "softedge_hed"),
    "normal": ("NormalBaeDetector", "normal_bae"),
    "mlsd": ("MLSDdetector", "mlsd"),
    "scribble": ("HEDdetector", "scribble_hed"),
}
BUILT_IN = {"canny": "canny", "raw": "none"}  # dream's TYPE -> A1111's module name
TYPES = (*BUILT_IN, *AUX_DETECTORS)


def a1111_module(kind: str) -> str:
    """The name A1111's ControlNet extension gives this preprocessor ("none" for a ready map)."""
    return BUILT_IN.get(kind) or AUX_DETECTORS.get(kind, (None, kind))[1]


def canny(picture: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH, sigma: float = 1.4) -> Image.Image:
    """Canny's edge map of a picture as white lines on black (RGB): Gaussian blur, Sobel gradients, thinning to
    the local maxima across each edge, then hysteresis (weak edges kept where they touch strong ones)."""
    from scipy import ndimage

    grey = np.asarray(picture.convert("L"), np.float64)
    smooth = ndimage.gaussian_filter(grey, sigma)
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(gx, gy)
    thin = _non_maximum(magnitude, gx, gy)
    strong, weak = thin >= high, thin >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), bool))
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    edges = keep[labels]
    return Image.fromarray(np.where(edges, 255, 0).astype(np.uint8), "L").convert("RGB")


def _non_maximum(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The magnitude where it is the largest of its two neighbours along the gradient (4 directions), else 0."""
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    # Direction bins: 0 deg (horizontal gradient), 45, 90, 135; image rows grow downwards.
    bins = np.digitize(angle, [22.5, 67.5, 112.5, 157.5]) % 4
    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    out = np.zeros_like(magnitude)
    for direction, (a, b) in neighbours.items():
        here = bins == direction
        # >= on one side and > on the other keeps exactly one pixel of a two-pixel-wide plateau.
        peak = (magnitude >= shifted(*a)) & (magnitude > shifted(*b))
        out[here & peak] = magnitude[here & peak]
    return out


def control_map(kind: str, picture: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """The map a ControlNet of this type reads, from a picture (already at the working size)."""
    if kind == "raw":
        return picture.convert("RGB")
    if kind == "canny":
        return canny(picture, low, high)
    if kind in AUX_DETECTORS:
        return _aux(kind, picture)
    raise InputError(f"unknown control type {kind!r}: use one of {', '.join(TYPES)}")


def _aux(kind: str, picture: Image.Image) -> Image.Image:
    """A controlnet-aux detector, when the package is installed and its weights are in the Hugging Face cache."""
    class_name = AUX_DETECTORS[kind][0]
    try:
        import controlnet_aux
    except ImportError:
        raise InputError(
            f"control type {kind} needs controlnet-aux: pip install controlnet-aux (its {class_name} weights come "
            f"from lllyasviel/Annotators), or give a ready map with --control raw:MAP"
        ) from None
    try:
        detector = getattr(controlnet_aux, class_name).from_pretrained("lllyasviel/Annotators")
    except Exception as e:  # offline and not cached, or a version without this detector
        raise InputError(
            f"control type {kind}: controlnet-aux's {class_name} could not load its weights ({type(e).__name__}): "
            "download lllyasviel/Annotators once online (hf download lllyasviel/Annotators), or give a ready map "
            "with --control raw:MAP"
        ) from None
    out = detector(picture)
    return out.convert("RGB").resize(picture.size, Image.Resampling.BILINEAR)
