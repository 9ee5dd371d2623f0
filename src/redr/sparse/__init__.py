"""Sparse storage, kernels, topology init and topology changes."""
from redr.sparse.distribution import ERK, Distribution, FanIn, LayerShape, PerLayer, Uniform, make_distribution
from redr.sparse.conv import SparseConv2d
from redr.sparse.layer import SparseLinear
from redr.sparse.matrix import SparseMatrixModule, TopologyChange, TopologyError
from redr.sparse.layout import CSRLayout
from redr.sparse.topology import partitioned_topology

__all__ = ["SparseConv2d", "SparseLinear", "SparseMatrixModule", "TopologyChange", "TopologyError", "CSRLayout", "Distribution", "ERK", "FanIn",
           "LayerShape", "PerLayer", "Uniform", "make_distribution", "partitioned_topology"]
