"""Layer-wise density distributions: how many inputs each neuron of each sparse layer gets.

A sparse net's topology is decided from the layer shapes alone, before any layer exists: a
:class:`Distribution` gives every sparse layer its fan-in (active inputs per output neuron), the topology
builder (:func:`redr.sparse.topology.partitioned_topology`) places them, and the layer is built from the
given rows and columns (:meth:`redr.sparse.SparseLinear.from_topology`). Every neuron of a layer gets the
same fan-in (the paper's partitioned init, after Ertl), so a layer density ``d`` becomes
``round(d x inputs)`` inputs per neuron: :func:`rounded_fan_in`, the one rounding rule.

This module is also the one place that refuses a density or a fan-in (out of range, zero inputs for a
layer's neurons, more inputs than a layer has): a one-line :class:`~redr.errors.UsageError` that names
the layer and the fix. The messages use the option names of ``redr train``, shared by the Python API.

Layers are :class:`LayerShape` s: an ``(out, in)`` matrix shape plus optional kernel dims, so that
convolutions (ERK's kernel term) plug in without a change here. Only the layers that become sparse are
passed: layers kept dense (``keep_dense``, ``dense_last``) are outside every distribution's budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

from redr.errors import UsageError

#: The names ``--distribution`` accepts (``--fan-in K`` is the third distribution, constant fan-in).
DISTRIBUTIONS = ("uniform", "erk")


@dataclass(frozen=True)
class LayerShape:
    """A layer as a distribution sees it: its name, ``(out, in)`` shape and kernel dims (``()`` for linear)."""

    name: str
    out_features: int
    in_features: int
    kernel: tuple = ()

    @property
    def inputs(self) -> int:
        """The possible inputs of one output neuron (``in_features`` times the kernel's positions)."""
        return self.in_features * math.prod(self.kernel)

    @property
    def positions(self) -> int:
        """Weights of the dense layer."""
        return self.out_features * self.inputs

    def __str__(self) -> str:
        kernel = f", kernel {'x'.join(map(str, self.kernel))}" if self.kernel else ""
        return f"{self.name} ({self.in_features} -> {self.out_features}{kernel})"


# ---------------------------------------------------------------------- the one rule and the one validation
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_density(density, what: str = "--density"):
    """``density`` itself, if it is a number in (0, 1]."""
    if not _is_number(density) or not 0 < density <= 1:
        raise UsageError(f"{what} must be in (0, 1], got {density!r}")
    return density


def check_fan_in(fan_in, what: str = "--fan-in") -> int:
    """``fan_in`` itself, if it is a whole number >= 1 (whether a layer has that many inputs: :func:`layer_fan_in`)."""
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or fan_in < 1:
        raise UsageError(f"{what} must be a whole number >= 1, got {fan_in!r}")
    return fan_in


def rounded_fan_in(inputs: int, density: float) -> int:
    """The one rounding rule: a neuron with ``inputs`` possible inputs at ``density`` gets ``round(density x inputs)``."""
    return int(round(density * inputs))


def fan_in_for_density(inputs: int, density: float) -> int:
    """A lone layer's fan-in (``SparseLinear(in, out, density)``): the rule, raised to 1 where it rounds to 0.

    A layer built on its own has nobody to ask, so it never builds a neuron without inputs (it is then
    denser than asked); the distributions (``build_mlp``, ``sparsify``, ``redr train``) refuse such a
    density instead.
    """
    return max(1, rounded_fan_in(inputs, check_density(density)))


def layer_fan_in(layer: LayerShape, *, density: Optional[float] = None, fan_in: Optional[int] = None,
                 asked: str, fix: str) -> int:
    """The fan-in of ``layer`` for a density (by the one rule) or a given fan-in, refusing one it cannot build.

    ``asked`` says what was asked (``--density 0.01``), ``fix`` what to do instead; both go into the message.
    """
    if fan_in is None:
        fan_in = rounded_fan_in(layer.inputs, density)
        if fan_in < 1:
            raise UsageError(f"{asked} leaves the neurons of layer {layer} with zero inputs "
                             f"(round({density:.6g} x {layer.inputs}) = 0); {fix}")
    elif fan_in > layer.inputs:
        raise UsageError(f"{asked} is more than the {layer.inputs} inputs of layer {layer}; {fix}")
    return fan_in


# ---------------------------------------------------------------------- distributions
class Distribution:
    """Gives each sparse layer its fan-in from the layers' shapes alone (nothing is drawn).

    ``asked`` is the option text as the user gave it, ``option`` the one to lower for more free positions.
    """

    asked: str
    option: str

    def fan_ins(self, layers: Sequence[LayerShape]) -> list[int]:
        """One validated fan-in per layer, in the order given."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short text for a run's start line."""
        raise NotImplementedError


@dataclass(frozen=True)
class _ByDensity(Distribution):
    """A distribution that gives each layer a density; the rule turns it into the layer's fan-in."""

    density: float
    option = "--density"
    name = ""  # as --distribution takes it; "" for the default, uniform

    def __post_init__(self):
        check_density(self.density)

    @property
    def asked(self) -> str:
        return f"--distribution {self.name} --density {self.density}" if self.name else f"--density {self.density}"

    def describe(self) -> str:
        return f"{self.name} d={self.density}".strip()

    def densities(self, layers: Sequence[LayerShape]) -> list[float]:
        raise NotImplementedError

    def min_density(self, layers: Sequence[LayerShape]) -> float:
        """The smallest density that gives every layer at least one input per neuron (for the message)."""
        raise NotImplementedError

    def fan_ins(self, layers):
        fix = f"use --density >= {self.min_density(layers):.6g} (one input per neuron in every sparse layer)"
        return [layer_fan_in(layer, density=d, asked=self.asked, fix=fix)
                for layer, d in zip(layers, self.densities(layers))]


@dataclass(frozen=True)
class Uniform(_ByDensity):
    """Every sparse layer at the same density (the paper's; the default)."""

    def densities(self, layers):
        return [self.density] * len(layers)

    def min_density(self, layers):
        return max((1.0 / layer.inputs for layer in layers), default=0.0)


def _erk_scale(layer: LayerShape) -> float:
    """RigL's Erdős–Rényi(-Kernel) factor: the sum of the weight tensor's dims over their product."""
    return (layer.out_features + layer.in_features + sum(layer.kernel)) / layer.positions


def erk_densities(layers: Sequence[LayerShape], density: float) -> list[float]:
    """Per-layer densities ``min(1, eps x scale_l)`` with ``eps`` such that the net keeps ``density`` of its weights.

    ``scale_l`` is :func:`_erk_scale` (RigL, Evci et al. 2020). A layer that would exceed density 1 is
    made dense and the others rescaled, the largest scale first, until none exceeds (the result is the
    unique ``eps`` with ``sum_l min(1, eps x scale_l) x positions_l = density x sum_l positions_l``).
    """
    scales = [_erk_scale(layer) for layer in layers]
    sizes = [layer.positions for layer in layers]
    budget, dense, eps = density * sum(sizes), set(), 0.0
    while len(dense) < len(layers):
        rest = [i for i in range(len(layers)) if i not in dense]
        eps = (budget - sum(sizes[i] for i in dense)) / sum(scales[i] * sizes[i] for i in rest)
        over = [i for i in rest if eps * scales[i] > 1]
        if not over:
            break
        dense.add(max(over, key=scales.__getitem__))
    return [1.0 if i in dense else eps * scales[i] for i in range(len(layers))]


@dataclass(frozen=True)
class ERK(_ByDensity):
    """RigL's Erdős–Rényi-Kernel: a layer's density grows with ``(in + out) / (in x out)`` (kernels: see
    :func:`erk_densities`), so that small layers are denser; the net as a whole keeps ``density``
    (before each layer's density is rounded to whole inputs per neuron)."""

    name = "erk"

    def densities(self, layers):
        return erk_densities(layers, self.density)

    def min_density(self, layers):
        if not layers:
            return 0.0
        # one input per neuron in layer l needs eps x scale_l x inputs_l >= 1
        eps = max(1.0 / (_erk_scale(layer) * layer.inputs) for layer in layers)
        total = sum(layer.positions for layer in layers)
        return sum(min(1.0, eps * _erk_scale(layer)) * layer.positions for layer in layers) / total


@dataclass(frozen=True)
class FanIn(Distribution):
    """Every neuron of every sparse layer gets ``k`` inputs, one per equal partition of its inputs."""

    k: int
    option = "--fan-in"

    def __post_init__(self):
        check_fan_in(self.k)

    @property
    def asked(self) -> str:
        return f"--fan-in {self.k}"

    def describe(self) -> str:
        return f"fan-in {self.k}"

    def fan_ins(self, layers):
        fix = f"use --fan-in <= {min(layer.inputs for layer in layers)} (the fewest inputs of a sparse layer)" if layers else ""
        return [layer_fan_in(layer, fan_in=self.k, asked=self.asked, fix=fix) for layer in layers]


LayerValue = Union[float, int]


@dataclass(frozen=True)
class PerLayer(Distribution):
    """A density (a float) or a fan-in (an int) for each sparse layer by name, as in ``named_modules()``.

    Like scikit-learn's ``max_features``: ``0.5`` is half the inputs, ``5`` is five inputs. Every sparse
    layer needs an entry, and every entry a sparse layer.
    """

    values: Mapping[str, LayerValue] = field(default_factory=dict)
    option = "density or fan-in of that layer"

    def __post_init__(self):
        if not isinstance(self.values, Mapping):
            raise UsageError(f"a per-layer distribution maps layer names to densities or fan-ins, got {self.values!r}")
        for name, value in self.values.items():
            if not isinstance(name, str):
                raise UsageError(f"per-layer distribution: layer names are strings (as in named_modules()), got {name!r}")
            if isinstance(value, float):
                check_density(value, f"the density of layer {name}")
            elif isinstance(value, int) and not isinstance(value, bool):
                check_fan_in(value, f"the fan-in of layer {name}")
            else:
                raise UsageError(f"layer {name}: give a density (a float in (0, 1]) or a fan-in (an int >= 1), got {value!r}")
        object.__setattr__(self, "values", dict(self.values))

    @property
    def asked(self) -> str:
        return "the per-layer distribution"

    def describe(self) -> str:
        return "per-layer " + ", ".join(f"{name}: {value}" for name, value in self.values.items())

    def fan_ins(self, layers):
        names = [layer.name for layer in layers]
        unknown = [name for name in self.values if name not in names]
        if unknown:
            raise UsageError(f"the per-layer distribution names {unknown}, which are not sparse layers of the model; "
                             f"its sparse layers are {names}")
        missing = [name for name in names if name not in self.values]
        if missing:
            raise UsageError(f"the per-layer distribution gives no density or fan-in for layer(s) {missing}; "
                             f"give one for every sparse layer ({names})")
        result = []
        for layer in layers:
            value = self.values[layer.name]
            if isinstance(value, float):
                result.append(layer_fan_in(layer, density=value, asked=f"density {value}",
                                           fix=f"give layer {layer.name} a density >= {1.0 / layer.inputs:.6g} or a fan-in >= 1"))
            else:
                result.append(layer_fan_in(layer, fan_in=value, asked=f"fan-in {value}",
                                           fix=f"give layer {layer.name} a fan-in <= {layer.inputs}"))
        return result


def make_distribution(distribution=None, density: Optional[float] = None, fan_in: Optional[int] = None) -> Optional[Distribution]:
    """The distribution the arguments of ``build_mlp``, ``sparsify`` or a ``RunConfig`` name; ``None``: none (dense).

    ``distribution``: a :class:`Distribution`, a mapping ``{layer name: density or fan-in}``, a name of
    :data:`DISTRIBUTIONS` (``uniform`` by default) used with ``density``, or ``None``. ``fan_in=K``:
    constant fan-in :class:`FanIn` (instead of a density).
    """
    if isinstance(distribution, (Distribution, Mapping)):
        if density is not None or fan_in is not None:
            raise UsageError("give a distribution object or mapping, or density / fan_in, not both")
        return distribution if isinstance(distribution, Distribution) else PerLayer(distribution)
    if distribution is not None and (not isinstance(distribution, str) or distribution not in DISTRIBUTIONS):
        raise UsageError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)} "
                         "(or --fan-in K for K inputs per neuron)")
    if fan_in is not None:
        if density is not None:
            raise UsageError("give --density or --fan-in, not both (--fan-in K gives every neuron K inputs)")
        if distribution == "erk":
            raise UsageError(f"--fan-in {fan_in} gives every neuron the same number of inputs; it does not combine "
                             "with --distribution erk (which spreads --density over the layers)")
        return FanIn(fan_in)
    if density is None:
        if distribution is None:
            return None
        raise UsageError(f"--distribution {distribution} needs a --density")
    return ERK(density) if distribution == "erk" else Uniform(density)
