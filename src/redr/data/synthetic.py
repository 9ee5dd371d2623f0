"""A small generated classification task (no files): for tests, examples and quick checks.

Inputs are standard normal; labels come from a fixed random teacher MLP, so the task is learnable but
not trivial. The data depend only on the sizes and ``data_seed``, never on the run's seed.
"""
from __future__ import annotations

import torch

from redr.data.dataset import Dataset

#: The default shape (input features, classes), which the run configuration checks layer sizes against.
FEATURES, CLASSES = 32, 10


def make_synthetic(train_rows: int = 2048, test_rows: int = 512, features: int = FEATURES, classes: int = CLASSES,
                   data_seed: int = 1234, device="cpu") -> Dataset:
    g = torch.Generator().manual_seed(data_seed)
    n = train_rows + test_rows
    x = torch.randn(n, features, generator=g)
    w1 = torch.randn(features, 64, generator=g) / features**0.5
    w2 = torch.randn(64, classes, generator=g) / 8.0
    y = (torch.relu(x @ w1) @ w2).argmax(1)
    info = {"dataset": "synthetic", "rows_train": train_rows, "rows_test": test_rows, "features": features,
            "classes": classes, "data_seed": data_seed}
    return Dataset(x[:train_rows].to(device), y[:train_rows].to(device), x[train_rows:].to(device),
                   y[train_rows:].to(device), task="multiclass", num_classes=classes, image_shape=None, info=info)
