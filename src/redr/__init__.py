"""redr: dynamic sparse training with truly sparse layers and weight redistribution."""
from redr.redistribution import ALGORITHMS, RedistributionSchedule, Redistributor, make_algorithm
from redr.sparse import SparseLinear
from redr.inference import export_dense_state_dict, load_checkpoint
from redr.sparse.convert import build_mlp, count_weights, parameter_equivalent_sizes, sparse_layers, sparsify

__version__ = "0.1.0"
__all__ = ["ALGORITHMS", "RedistributionSchedule", "Redistributor", "SparseLinear", "build_mlp", "count_weights",
           "make_algorithm", "parameter_equivalent_sizes", "sparse_layers", "sparsify"]
