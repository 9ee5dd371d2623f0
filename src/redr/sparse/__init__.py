"""Sparse storage, kernels, topology init and topology changes."""
from redr.sparse.layer import SparseLinear, TopologyChange, TopologyError
from redr.sparse.layout import CSRLayout

__all__ = ["SparseLinear", "TopologyChange", "TopologyError", "CSRLayout"]
