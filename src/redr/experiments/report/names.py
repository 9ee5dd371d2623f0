"""What the report calls each model, in which order it lists them, and in which colour it draws them.

Algorithms (names, display names, local/global scope) come from the registry, the one list of them;
this is the report's only import of it. The dense baselines are not algorithms: their labels live here.
"""
from __future__ import annotations

from redr.redistribution.algorithms.registry import display_name, names

STATIC = names("static")[0]
DYNAMIC = names("dynamic")
LOCAL = names("local")
GLOBAL = names("global")
DENSE_LABELS = {"dense-neuron": "dense neuron-eq.", "dense-param": "dense param-eq."}
DENSE = tuple(DENSE_LABELS)
#: Every model of an accuracy grid, in the order tables list them: static sparse, the algorithms, dense nets.
MODELS = (*names(), *DENSE)
#: One colour per model in every figure (unknown models get matplotlib's next colour).
COLORS = {"none": "tab:gray", "random": "tab:blue", "gradient": "tab:orange", "gradient-global": "tab:red",
          "loss": "tab:purple", "woodfisher": "tab:green", "woodtaylor": "tab:olive", "dense-neuron": "black",
          "dense-param": "tab:brown"}
DATASET_TITLES = {"kmnist": "KMNIST", "fashion-mnist": "Fashion-MNIST", "higgs": "HIGGS", "synthetic": "synthetic"}


def label(model: str) -> str:
    """Display name of an algorithm or a dense baseline (unknown names unchanged)."""
    return DENSE_LABELS.get(model) or display_name(model)


def order(model: str) -> int:
    """Sort key: the position in :data:`MODELS`, unknown models last."""
    return MODELS.index(model) if model in MODELS else len(MODELS)


def dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)
