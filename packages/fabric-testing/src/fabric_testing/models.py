"""Tiny models and datasets for tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyMLP(nn.Module):
    def __init__(self, in_features: int = 32, hidden: int = 64, out_features: int = 2) -> None:
        super().__init__()
        self.layer1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.layer2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.act(self.layer1(x)))


class TinyConvNet(nn.Module):
    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class RandomDataset(Dataset):  # type: ignore[type-arg]
    """``length`` random vectors of ``size`` features, reproducible from ``seed``."""

    def __init__(self, size: int = 32, length: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, size, generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


class RandomLabelledDataset(Dataset):  # type: ignore[type-arg]
    """``(x, y)`` pairs with ``y`` in ``[0, classes)``, reproducible from ``seed``."""

    def __init__(self, size: int = 32, length: int = 64, classes: int = 2, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, size, generator=generator)
        self.y = torch.randint(0, classes, (length,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]
