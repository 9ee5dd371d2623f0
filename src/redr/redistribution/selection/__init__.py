"""Selection: which weights go and where new ones come, given scores. Per-layer and global smallest /
largest (ties always to the lower index), streaming top-k with sampled thresholds, uniform random
growth, and budgets (how many weights each layer gives and gets). Imports only :mod:`redr.sparse`."""
from redr.redistribution.selection.budget import (CollapseGuard, GlobalGrowthBudget, GlobalRemovalBudget, LayerBudget,
                                                  collapse_floors, neuron_shares, proportional_shares, removal_count,
                                                  selected_count, water_fill)
from redr.redistribution.selection.positions import keys_to_positions, layer_offsets, split_by_layer
from redr.redistribution.selection.random import random_growth, random_inactive_keys
from redr.redistribution.selection.streaming_topk import StreamingTopK, kth_largest, sampled_threshold, stream_layer_into
from redr.redistribution.selection.topk import (global_smallest, largest_inactive_per_row, largest_k, largest_per_row,
                                                smallest_k, smallest_per_layer)

__all__ = ["CollapseGuard", "GlobalGrowthBudget", "GlobalRemovalBudget", "LayerBudget", "StreamingTopK",
           "collapse_floors", "global_smallest", "keys_to_positions", "kth_largest", "largest_inactive_per_row",
           "largest_k", "largest_per_row", "layer_offsets", "neuron_shares", "proportional_shares", "random_growth",
           "random_inactive_keys", "removal_count", "sampled_threshold", "selected_count", "smallest_k",
           "smallest_per_layer", "split_by_layer", "stream_layer_into", "water_fill"]
