"""Know the cost before allocating: the memory a run will need, from its options alone, and the refusal.

:func:`estimate_run` adds up, for the net a config describes (before anything is built):

* **persistent** (exact: the bytes of the model's own tensors): ``values`` (sparse values, biases, dense
  weights) and ``indices`` (per sparse layer ``col``, the transposed companion ``row_t`` and ``perm_t``, one
  number per active weight each, and the row pointers ``crow`` / ``crow_t``; int32, int64 from 2**31 on);
* **training** (exact after the first step): ``gradients`` (one per parameter) and ``optimizer`` (Adam's two
  moments and a 4-byte step counter per parameter tensor); ``activations`` at the batch size (bound below);
* **the algorithm's extra** at its largest redistribution (the schedule's largest alpha): the plan and the
  rebuild of the largest layer (``topology change``, about 41 bytes per weight of that layer), and per algorithm the second forward/backward on
  ``--redistribution-batches`` batches, the dense-gradient tile and top-k buffer (exact growth) or the
  candidates (sampled growth), Woodfisher's Fisher blocks and gradient buffer.

Activations are bounded by ``4 x batch x (inputs + outputs)`` numbers summed over the layers (each layer's
input and output and their gradients; ReLU outputs are the next layer's inputs); tests check that the
tensors autograd actually saves stay within it. Temporaries inside kernels, the allocator's slack, the data
and the interpreter are not counted; the data are already loaded when the estimate is checked against
what is still available (CPU: ``MemAvailable`` and the cgroup limit; CUDA: the device's free memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from redr.errors import UsageError

FLOAT = 4  # float32 values, gradients and moments
INT32_MAX = 2**31 - 1
#: per sampled candidate: its int64 key, float32 score and the sort/top-k temporaries over them
CANDIDATE_BYTES = 24
#: per streamed top-k slot: score and id, plus the compaction's copy
TOPK_BYTES = 16


@dataclass(frozen=True)
class LayerSize:
    """One layer of the net as the estimate sees it; ``nnz`` None for a dense ``nn.Linear``."""

    out_features: int
    in_features: int
    nnz: int | None

    @property
    def index_bytes(self) -> int:
        n = self.nnz if self.nnz is not None else 0
        return 4 if max(self.out_features, self.in_features, n) < INT32_MAX else 8

    @property
    def parameters(self) -> int:
        return (self.out_features * self.in_features if self.nnz is None else self.nnz) + self.out_features

    @property
    def indices(self) -> int:
        if self.nnz is None:
            return 0
        return self.index_bytes * (3 * self.nnz + self.out_features + self.in_features + 2)


#: When a part is held: always (the model and its training state), during a training step (its activations),
#: or during a redistribution (the algorithm's extra). A step and a redistribution never overlap.
PHASES = ("always", "step", "redistribution")


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    fix: str  # what to change to make this part smaller
    phase: str = "always"


@dataclass
class MemoryEstimate:
    parts: list[Part]
    layers: list[LayerSize]

    def part(self, name: str) -> int:
        return sum(p.bytes for p in self.parts if p.name == name)

    @property
    def persistent_bytes(self) -> int:
        return self.part("values") + self.part("indices")

    def phase_bytes(self, phase: str) -> int:
        return sum(p.bytes for p in self.parts if p.phase == phase)

    @property
    def total_bytes(self) -> int:
        """What is held at once: the persistent parts plus the larger of a step's and a redistribution's extra
        (the redistribution runs between epochs, after the last step's activations are freed)."""
        return self.phase_bytes("always") + max(self.phase_bytes("step"), self.phase_bytes("redistribution"))

    def biggest(self) -> Part:
        return max(self.parts, key=lambda p: p.bytes)

    def describe(self) -> str:
        shown = ", ".join(f"{p.name} {_size(p.bytes)}" for p in self.parts if p.bytes)
        return f"memory estimate: {_size(self.total_bytes)} ({shown})"

    def check(self, available: int | None) -> None:
        """A :class:`UsageError` (exit 2) naming the total, the biggest part and its fix when it does not fit."""
        if available is None or self.total_bytes <= available:
            return
        big = self.biggest()
        raise UsageError(f"this run needs about {_size(self.total_bytes)} but {_size(available)} are available; the "
                         f"biggest part is {big.name} ({_size(big.bytes)}): {big.fix} ({self.describe()})")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def layer_sizes(config, num_features: int, num_outputs: int) -> list[LayerSize]:
    """The layers ``build_model`` will build for ``config``, with their nnz, without building them."""
    from redr.sparse.convert import mlp_layer_shapes, parameter_equivalent_sizes

    sizes = config.sizes(num_features, num_outputs)
    dims = list(zip(sizes[:-1], sizes[1:]))
    if config.model == "dense-neuron":
        return [LayerSize(b, a, None) for a, b in dims]
    shapes = mlp_layer_shapes(sizes, config.dense_last)
    fan_ins = config.layer_distribution().fan_ins(shapes)
    sparse = [LayerSize(s.out_features, s.in_features, s.out_features * f) for s, f in zip(shapes, fan_ins)]
    layers = sparse + ([LayerSize(dims[-1][1], dims[-1][0], None)] if len(sparse) < len(dims) else [])
    if config.model == "sparse":
        return layers
    weights = sum(l.nnz if l.nnz is not None else l.out_features * l.in_features for l in layers)
    param = parameter_equivalent_sizes(sizes, weights)
    return [LayerSize(b, a, None) for a, b in zip(param[:-1], param[1:])]


def activation_bytes(layers: list[LayerSize], rows: int) -> int:
    """The bound on a forward and backward's activations for ``rows`` samples (module docstring)."""
    return 4 * rows * FLOAT * sum(l.in_features + l.out_features for l in layers)


def estimate_run(config, num_features: int, num_outputs: int) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of a run of ``config`` on data with these numbers of features and outputs."""
    layers = layer_sizes(config, num_features, num_outputs)
    params = sum(l.parameters for l in layers)
    tensors = sum(2 for _ in layers)  # weight (or values) and bias
    net = "a lower --density or --fan-in, or smaller --hidden"
    parts = [Part("values", FLOAT * params, f"use {net}"),
             Part("indices", sum(l.indices for l in layers),
                  f"use {net} (int64 indices from 2**31 weights per layer on: double the bytes)"),
             Part("gradients", FLOAT * params, f"use {net}"),
             Part("optimizer", 2 * FLOAT * params + 4 * tensors, f"use {net} (Adam keeps two moments per weight)"),
             Part("activations", activation_bytes(layers, config.batch_size), "use a smaller --batch-size", "step")]
    if config.model == "sparse" and config.algorithm != "none":
        parts += _algorithm_parts(config, [l for l in layers if l.nnz is not None], layers, net)
    return MemoryEstimate(parts, layers)


def _max_alpha(config) -> float:
    from redr.redistribution.mechanism.schedule import RedistributionSchedule

    schedule = RedistributionSchedule(config.epochs, config.redistribute_every, config.alpha0, config.end_fraction)
    return max((schedule.alpha(e) for e in schedule.epochs()), default=0.0)


def _algorithm_parts(config, sparse: list[LayerSize], layers: list[LayerSize], net: str) -> list[Part]:
    from redr.redistribution.algorithms.registry import make_algorithm

    algorithm = make_algorithm(config.algorithm, **config.algorithm_options)
    options = algorithm.options()
    alpha = _max_alpha(config)
    moved = [int(alpha * l.nnz) for l in sparse]
    largest = max(sparse, key=lambda l: l.nnz)
    key_bytes = 4 if largest.out_features * largest.in_features <= INT32_MAX else 8
    # SparseLinear.change_topology of the largest layer: old/new/merged keys, two int64 maps, the keep mask,
    # new values and moments; the plan: a removal and a (row, col) growth per moved weight
    rebuild = largest.nnz * (3 * key_bytes + 2 * 8 + 1 + 3 * FLOAT)
    parts = [Part("topology change", 3 * largest.index_bytes * sum(moved) + rebuild,
                  f"use {net} (a redistribution briefly holds the largest layer twice), or a smaller --alpha0",
                  "redistribution")]
    if algorithm.needs_batches:
        rows = config.batch_size * config.redistribution_batches
        parts.append(Part("gradient pass", activation_bytes(layers, rows), "use fewer --redistribution-batches",
                          "redistribution"))
        path = getattr(getattr(algorithm, "growth", None), "path", None)
        if path is not None and path.sampled(sparse):
            global_scope = config.algorithm == "gradient-global"
            held = sum(moved) if global_scope else max(moved)
            parts.append(Part("candidates", CANDIDATE_BYTES * math.ceil(path.candidates * held) if
                              math.isfinite(path.candidates) else CANDIDATE_BYTES * sum(l.out_features * l.in_features
                                                                                        for l in sparse),
                              "use fewer --candidates", "redistribution"))
        else:
            tile = 3 * FLOAT * options["tile_rows"] * max(l.in_features for l in sparse)
            k = sum(moved) if config.algorithm == "gradient-global" else max(moved)
            parts.append(Part("gradient tiles", tile + TOPK_BYTES * (k + max(k // 4, 65536)),
                              "use a smaller --tile-rows, or --growth sampled", "redistribution"))
    if "block_size" in options:
        b = options["block_size"]
        blocks = sum(math.ceil(l.nnz / b) for l in sparse)
        per_block = b * (b + 1) // 2 + options["buffer_steps"] * b + (b if config.algorithm == "woodtaylor" else 0)
        parts.append(Part("fisher blocks", FLOAT * blocks * per_block,
                          f"use a smaller --block-size (now {b}; the blocks hold (B + 1) / 2 + buffer_steps numbers per weight), "
                          "or a gradient-based algorithm"))
    return parts


def available_memory(device) -> int | None:
    """Bytes still available to this process: CUDA, the device's free memory; CPU, ``MemAvailable``, lowered
    to the cgroup's limit minus its usage where one is set. None where neither can be read."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            current = int(fh.read().strip())
        if limit != "max":
            found.append(int(limit) - current)
    except (OSError, ValueError):
        pass
    return min(found) if found else None
