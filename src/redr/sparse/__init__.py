"""Sparse storage, kernels, topology init and topology changes."""
from redr.sparse.distribution import ERK, Distribution, FanIn, LayerShape, PerLayer, Uniform, make_distribution
from redr.sparse.layer import SparseLinear, TopologyChange, TopologyError
from redr.sparse.layout import CSRLayout
from redr.sparse.topology import partitioned_topology

__all__ = ["SparseLinear", "TopologyChange", "TopologyError", "CSRLayout", "Distribution", "ERK", "FanIn",
           "LayerShape", "PerLayer", "Uniform", "make_distribution", "partitioned_topology"]
