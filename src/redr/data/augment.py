"""Random affine augmentation, batched on the images' device, with all randomness from a CPU generator.

The paper trains KMNIST with "random affine data augmentation" without giving ranges; the defaults here are
mild for 28x28 characters (a stroke must not leave the frame or turn into another character):
rotation +-10 deg, translation +-10 % of the side (2.8 px), scale 0.9..1.1, x-shear +-5 deg.
Parameters are drawn on the CPU from the generator passed in (6 numbers per image, whatever the options), so
results do not depend on the device, and saving/restoring that generator reproduces a resumed run exactly.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from redr.errors import UsageError

Range = Union[float, Sequence[float]]


def _numbers(value, name: str, counts: Tuple[int, ...]) -> Tuple[float, ...]:
    """``value`` as a tuple of floats of one of the allowed lengths (a bare number has length 1)."""
    items = (value,) if isinstance(value, (int, float)) else tuple(value) if isinstance(value, (list, tuple)) else None
    if items is None or len(items) not in counts or not all(isinstance(v, (int, float)) for v in items):
        allowed = " or ".join({1: "a number", 2: "(min, max)", 4: "(xmin, xmax, ymin, ymax)"}[c] for c in counts)
        raise UsageError(f"{name} must be {allowed}, got {value!r}")
    return tuple(float(v) for v in items)


def _symmetric(value: Range, name: str) -> Tuple[float, float]:
    """``d`` -> (-d, d); ``(lo, hi)`` as given."""
    items = _numbers(value, name, (1, 2))
    if len(items) == 1:
        if items[0] < 0:
            raise UsageError(f"{name} must be >= 0, got {items[0]}")
        return (-items[0], items[0])
    if items[0] > items[1]:
        raise UsageError(f"{name} range must be (min, max), got {value!r}")
    return items


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (n, C, H, W), align_corners=False)`` by broadcasting: the same grid, measured
    2-3x faster on the CPU for 512 images of 28x28 (affine_grid took a quarter of a Fashion-MNIST epoch)."""
    opts = {"device": theta.device, "dtype": theta.dtype}
    xs = ((torch.arange(width, **opts) * 2 + 1) / width - 1).view(1, 1, width)
    ys = ((torch.arange(height, **opts) * 2 + 1) / height - 1).view(1, height, 1)
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack([gx, gy], -1)


class RandomAffine:
    """Rotate, translate, scale and shear each image by its own random amount (bilinear, zero padding).

    Ranges follow torchvision's ``RandomAffine``: ``degrees`` d -> uniform in (-d, d); ``translate`` (a, b) ->
    horizontal shift in (-a*W, a*W), vertical in (-b*H, b*H); ``scale`` (lo, hi); ``shear`` s -> x-shear in (-s, s)
    degrees, or (lo, hi) for x, or (xlo, xhi, ylo, yhi). ``image_shape`` (C, H, W) is used for flat input.
    """

    def __init__(
        self,
        degrees: Range = 10.0,
        translate: Union[float, Tuple[float, float]] = (0.1, 0.1),
        scale: Tuple[float, float] = (0.9, 1.1),
        shear: Range = 5.0,
        image_shape: Tuple[int, int, int] = (1, 28, 28),
        fill: float = 0.0,
    ):
        self.degrees = _symmetric(degrees, "degrees")
        moves = _numbers(translate, "translate", (1, 2))
        tx, ty = moves * 2 if len(moves) == 1 else moves
        if not (0 <= tx <= 1 and 0 <= ty <= 1):
            raise UsageError(f"translate fractions must be in [0, 1], got {translate!r}")
        self.translate = (tx, ty)
        lo, hi = _numbers(scale, "scale", (2,))
        if not 0 < lo <= hi:
            raise UsageError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
        self.scale = (lo, hi)
        shears = _numbers(shear, "shear", (1, 2, 4))
        if len(shears) == 4:
            self.shear = _symmetric(shears[:2], "shear x") + _symmetric(shears[2:], "shear y")
        else:
            self.shear = _symmetric(shears, "shear") + (0.0, 0.0)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.fill = float(fill)

    def __repr__(self) -> str:
        return (f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
                f"shear={self.shear}, image_shape={self.image_shape}, fill={self.fill})")

    def theta(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) float64 CPU matrices for ``affine_grid`` (output -> input, normalised coordinates)."""
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise UsageError("RandomAffine needs a CPU torch.Generator (parameters are drawn on the CPU)")
        u = torch.rand(n, 6, generator=generator, dtype=torch.float64)

        def pick(col: int, lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * u[:, col]

        angle = -torch.deg2rad(pick(0, *self.degrees))  # positive = counter-clockwise on screen (y down)
        tx = pick(1, -self.translate[0], self.translate[0]) * width
        ty = pick(2, -self.translate[1], self.translate[1]) * height
        s = pick(3, *self.scale)
        shx = torch.tan(torch.deg2rad(pick(4, *self.shear[:2])))
        shy = torch.tan(torch.deg2rad(pick(5, *self.shear[2:])))
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        one, zero = torch.ones_like(shx), torch.zeros_like(shx)
        shear = torch.stack([torch.stack([one, shx], -1), torch.stack([zero, one], -1)], -2) @ torch.stack(
            [torch.stack([one, zero], -1), torch.stack([shy, one], -1)], -2)
        forward = rot @ shear * s[:, None, None]  # pixel offsets from the centre -> pixel offsets
        inverse = torch.linalg.inv(forward)
        half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
        linear = inverse * half[None, :] / half[:, None]  # D^-1 M^-1 D, D = diag(W/2, H/2)
        offset = -(inverse @ torch.stack([tx, ty], -1)[..., None])[..., 0] / half
        return torch.cat([linear, offset[..., None]], -1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``images`` ((N, C*H*W), (N, H, W) or (N, C, H, W)), same shape, dtype and device."""
        if not images.is_floating_point():
            raise UsageError(f"RandomAffine expects float images, got {images.dtype}")
        shape = images.shape
        if images.dim() == 2:
            if shape[1] != math.prod(self.image_shape):
                raise UsageError(f"flat images have {shape[1]} values, image_shape {self.image_shape} needs "
                                 f"{math.prod(self.image_shape)}")
            batch = images.reshape(shape[0], *self.image_shape)
        elif images.dim() == 3:
            batch = images.unsqueeze(1)
        elif images.dim() == 4:
            batch = images
        else:
            raise UsageError(f"RandomAffine expects (N, F), (N, H, W) or (N, C, H, W) images, got {tuple(shape)}")
        n, _, height, width = batch.shape
        theta = self.theta(n, height, width, generator).to(device=images.device, dtype=images.dtype)
        grid = _affine_grid(theta, height, width)
        shifted = batch - self.fill if self.fill else batch
        out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out + self.fill if self.fill else out).reshape(shape)
