"""RandomAffine: reproducible from the generator alone, really changes images, keeps shape, sane geometry."""
from __future__ import annotations

import pytest
import torch

from redr.data import RandomAffine, load_dataset
from redr.errors import UsageError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blobs(n=8):
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 10:16, 9:19] = 1.0
    x[:, :, 16:20, 9:12] = 0.5  # asymmetric, so rotations are visible
    return x


def test_reproducible_with_the_same_generator_state():
    aug, x = RandomAffine(), blobs()
    a, b = aug(x, gen(1)), aug(x, gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x, gen(2)))
    g = gen(3)
    state = g.get_state()
    first = aug(x, g)
    assert not torch.equal(first, aug(x, g))  # the generator advanced
    g.set_state(state)  # what checkpoint/resume does
    assert torch.equal(first, aug(x, g))


def test_every_image_gets_its_own_parameters_and_changes():
    x = blobs(16)
    out = RandomAffine()(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert ((out - x).abs().flatten(1).sum(1) > 1.0).all()  # each image changed
    assert not torch.equal(out[0], out[1])
    assert out.min() >= 0 and out.max() <= 1


def test_shapes_flat_3d_4d():
    aug = RandomAffine()
    x = blobs(4)
    flat, three = x.reshape(4, 784), x[:, 0]
    assert torch.equal(aug(flat, gen()), aug(x, gen()).reshape(4, 784))
    assert torch.equal(aug(three, gen()), aug(x, gen())[:, 0])
    with pytest.raises(UsageError, match="784"):
        aug(torch.zeros(2, 100), gen())
    with pytest.raises(UsageError, match="float"):
        aug(torch.zeros(2, 784, dtype=torch.uint8), gen())
    with pytest.raises(UsageError, match="CPU torch.Generator"):
        aug(flat, None)


def test_identity_when_all_ranges_are_zero():
    x = torch.rand(4, 1, 28, 28, generator=gen())
    out = RandomAffine(degrees=0, translate=0, scale=(1, 1), shear=0)(x, gen())
    assert torch.allclose(out, x, atol=1e-5)


def test_rotation_by_90_degrees_is_exact():
    x = blobs(2)
    out = RandomAffine(degrees=(90, 90), translate=0, scale=(1, 1), shear=0)(x, gen())
    assert torch.allclose(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5)  # counter-clockwise, as torchvision


def test_translation_moves_the_centre_of_mass_by_the_drawn_shift():
    aug = RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(1, 1), shear=0)
    x = blobs(6)
    theta = aug.theta(6, 28, 28, gen(5))
    out = aug(x, gen(5))
    cols = torch.arange(28.0)

    def com(img):
        mass = img.sum((1, 2, 3))
        return (img.sum((1, 2)) @ cols) / mass, (img.sum((1, 3)) @ cols) / mass

    (x0, y0), (x1, y1) = com(x), com(out)
    shift_x, shift_y = -theta[:, 0, 2] * 14, -theta[:, 1, 2] * 14
    assert shift_x.abs().max() <= 2.8 + 1e-6 and shift_x.abs().max() > 0.5
    assert torch.allclose(x1 - x0, shift_x.float(), atol=1e-3)
    assert torch.allclose(y1 - y0, shift_y.float(), atol=1e-3)


def test_parameters_are_validated():
    for kwargs, match in [({"degrees": -1}, "degrees"), ({"translate": 2.0}, "translate"),
                          ({"scale": (1.2, 1.0)}, "scale"), ({"shear": (1, 2, 3)}, "shear"),
                          ({"scale": 1.0}, r"scale must be \(min, max\)"), ({"degrees": (1, 2, 3)}, "degrees"),
                          ({"translate": (0.1, 0.1, 0.1)}, "translate"), ({"degrees": "x"}, "degrees")]:
        with pytest.raises(UsageError, match=match):
            RandomAffine(**kwargs)
    assert "degrees=(-10.0, 10.0)" in repr(RandomAffine())
    # the forms a command line gives (single numbers, lists)
    aug = RandomAffine(degrees=15.0, translate=0.05, scale=[0.8, 1.2], shear=[-3, 3, -2, 2])
    assert (aug.degrees, aug.translate, aug.scale, aug.shear) == ((-15, 15), (0.05, 0.05), (0.8, 1.2), (-3, 3, -2, 2))


def test_mild_on_real_images(shared_data_dir):
    ds = load_dataset("fashion-mnist", data_dir=shared_data_dir, train_rows=256, test_rows=0, download=False,
                      progress=False)
    out = RandomAffine()(ds.train_x, gen())
    corr = torch.nn.functional.cosine_similarity(out, ds.train_x, dim=1)
    assert (out - ds.train_x).abs().mean() > 0.02  # visibly changed
    assert corr.mean() > 0.7  # still the same garment
    assert out.shape == (256, 784)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = blobs(8)
    cpu = RandomAffine()(x, gen(7))
    gpu = RandomAffine()(x.cuda(), gen(7))
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-4)
