"""Signals: what algorithms score with. The dense gradient streamed layer by layer at redistribution time
(with its per-neuron error and the scores of inactive positions), and the block-wise empirical Fisher with
the removal statistics it gives. Besides :mod:`redr.sparse`, the only code that reads a layer's CSR."""
from redr.redistribution.signals.dense_gradient import (DEFAULT_TILE_ROWS, GradientPass, GradientStats, LayerGradient,
                                                        check_gradient_options, stream_layer_gradients)
from redr.redistribution.signals.fisher import DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING, BlockFisher, BlockInverse
from redr.redistribution.signals.fisher_blocks import BlockLayout
from redr.redistribution.signals.woodfisher_statistics import optimal_update, removal_statistics

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_DAMPENING", "DEFAULT_TILE_ROWS", "BlockFisher", "BlockInverse", "BlockLayout",
           "GradientPass", "GradientStats", "LayerGradient", "check_gradient_options", "optimal_update", "removal_statistics",
           "stream_layer_gradients"]
