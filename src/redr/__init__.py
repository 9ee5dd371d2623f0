"""redr: dynamic sparse training with truly sparse layers and weight redistribution."""
from redr.inference import export_dense_state_dict, load_checkpoint
from redr.redistribution import ALGORITHMS, RedistributionSchedule, Redistributor, make_algorithm
from redr.sparse import SparseLinear
from redr.sparse.convert import build_mlp, count_weights, parameter_equivalent_sizes, sparse_layers, sparsify
from redr.training.config import RunConfig
from redr.training.trainer import Trainer, train

__version__ = "0.1.0"
__all__ = ["ALGORITHMS", "RedistributionSchedule", "Redistributor", "RunConfig", "SparseLinear", "Trainer",
           "build_mlp", "count_weights", "export_dense_state_dict", "load_checkpoint", "make_algorithm",
           "parameter_equivalent_sizes", "sparse_layers", "sparsify", "train"]
