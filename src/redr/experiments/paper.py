"""The paper's published numbers (Eibensteiner, *Weight Redistribution Algorithms for Sparse Neural
Networks*, Tables 1 and 2), placed beside ours in the report as ratios to the dense neuron-equivalent net."""
from __future__ import annotations

#: Table 1: seconds per training epoch on HIGGS (500,000 rows, batch 128) at d=0.1, on the paper's GPU.
TABLE1_SECONDS = {
    "dense-neuron": 9.80,
    "dense-param": 9.62,
    "none": 13.64,
    "random": 21.45,
    "gradient-global": 22.20,
}

#: Table 2: GPU memory in megabytes on the KMNIST net with 4096-wide hidden layers.
TABLE2_MB = {
    ("random", 0.1): 305.1, ("loss", 0.1): 914.4, ("gradient", 0.1): 320.4, ("gradient-global", 0.1): 354.5,
    ("woodfisher", 0.1): 1712.5, ("woodtaylor", 0.1): 1712.7, ("none", 0.1): 151.3,
    ("random", 0.06): 265.9, ("loss", 0.06): 903.4, ("gradient", 0.06): 271.2, ("gradient-global", 0.06): 297.5,
    ("woodfisher", 0.06): 1041.4, ("woodtaylor", 0.06): 1042.5, ("none", 0.06): 129.1,
    ("random", 0.03): 237.0, ("loss", 0.03): 899.1, ("gradient", 0.03): 241.3, ("gradient-global", 0.03): 254.2,
    ("woodfisher", 0.03): 631.1, ("woodtaylor", 0.03): 631.5, ("none", 0.03): 111.2,
    ("dense-param", None): 44.6,
    ("dense-neuron", None): 456.7,
}


def table1_ratio(model: str):
    if model not in TABLE1_SECONDS:
        return None
    return TABLE1_SECONDS[model] / TABLE1_SECONDS["dense-neuron"]


def table2_mb(model: str, density: float):
    key = (model, None) if model.startswith("dense-") else (model, round(density, 6))
    return TABLE2_MB.get(key)


def table2_ratio(model: str, density: float):
    mb = table2_mb(model, density)
    return None if mb is None else mb / TABLE2_MB[("dense-neuron", None)]
