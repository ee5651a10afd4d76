from __future__ import annotations

import torch

from fabric_testing import RandomDataset, RandomLabelledDataset, TinyConvNet, TinyMLP


def test_tiny_mlp_shapes_and_gradients() -> None:
    model = TinyMLP(in_features=5, hidden=7, out_features=3)
    out = model(torch.randn(4, 5))
    assert out.shape == (4, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tiny_conv_net_shapes() -> None:
    model = TinyConvNet(channels=1, classes=4)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_random_dataset_is_reproducible_from_its_seed() -> None:
    a, b, c = RandomDataset(size=3, length=5, seed=1), RandomDataset(size=3, length=5, seed=1), RandomDataset(3, 5, 2)
    assert len(a) == 5
    assert a[0].shape == (3,)
    assert torch.equal(torch.stack([a[i] for i in range(5)]), torch.stack([b[i] for i in range(5)]))
    assert not torch.equal(a[0], c[0])


def test_random_dataset_does_not_touch_the_global_generator() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    RandomDataset()
    RandomLabelledDataset()
    assert torch.equal(torch.rand(1), expected)


def test_random_labelled_dataset() -> None:
    data = RandomLabelledDataset(size=4, length=50, classes=3, seed=0)
    assert len(data) == 50
    x, y = data[7]
    assert x.shape == (4,)
    labels = {int(data[i][1]) for i in range(len(data))}
    assert labels == {0, 1, 2}
    x2, y2 = RandomLabelledDataset(size=4, length=50, classes=3, seed=0)[7]
    assert torch.equal(x, x2)
    assert int(y) == int(y2)
