"""The paper's experiments as grids of runs ("cells").

A :class:`Cell` is one training run: a readable directory name and the options given to
:meth:`RunConfig.from_options`. :func:`build_cells` turns an experiment name and the command-line
choices into the cells; :mod:`redr.experiments.runner` runs them, :mod:`redr.experiments.report`
reads them back.

Run names carry everything that tells cells of one output folder apart (dataset, model, algorithm,
density, seed and any non-default setting), so experiments that share a run (the d=0.1 Redr-Random run of
the Fashion-MNIST grid is also a point of the frequency and depth figures) share its directory when they
are given the same ``--out``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from redr.errors import UsageError
from redr.redistribution.algorithms.registry import names as algorithm_names
from redr.redistribution.signals.fisher import DEFAULT_BLOCK_SIZE
from redr.training.config import PRESETS, paper_preset

#: Every algorithm that moves weights, in the registry's (the paper's) order.
DYNAMIC_ALGORITHMS = algorithm_names("dynamic")
STATIC = algorithm_names("static")[0]
DENSE_MODELS = ("dense-neuron", "dense-param")
#: Everything an accuracy grid trains, in the order tables list it.
GRID_MODELS = (STATIC, *DYNAMIC_ALGORITHMS, *DENSE_MODELS)
DENSITIES = (0.1, 0.06, 0.03)
#: The density the parameter-equivalent dense net is matched to (the paper's 784-33-33-10 / 21-79-79-79-1).
PARAM_EQ_DENSITY = 0.1
FREQUENCIES = (1, 2, 4, 8)
#: Section 4.3.2: the original net and two deeper ones with about the same number of weights.
DEPTH_HIDDEN = ((256, 256), (256, 128, 128, 128), (128,) * 8)
#: Section 4.3.3: Woodtaylor's dampening (lambda) sweep at the paper's block size, and a block-size sweep
#: at lambda = 1 (the value the paper found best on KMNIST).
WOODTAYLOR_LAMBDAS = (1e-4, 1e-2, 1.0, 100.0)
WOODTAYLOR_BLOCKS = (8, 16, 34, 64)
WOODTAYLOR_BLOCK = DEFAULT_BLOCK_SIZE
WOODTAYLOR_LAMBDA = 1.0
MEMORY_HIDDEN = (4096, 4096)

ACCURACY_EXPERIMENTS = ("kmnist", "fashion-mnist", "higgs", "synthetic")
EXPERIMENTS = ("kmnist", "fashion-mnist", "higgs", "induced-loss", "frequency", "depth", "woodtaylor", "timing",
               "memory", "synthetic", "growth", "scale")
#: Experiments that take ``--dataset`` (the paper ran them on KMNIST; woodtaylor on both datasets).
DEFAULT_DATASETS = {"induced-loss": ("kmnist",), "frequency": ("kmnist",), "depth": ("kmnist",),
                    "woodtaylor": ("kmnist", "higgs"), "timing": ("higgs",), "memory": ("kmnist",)}

DESCRIPTIONS = {
    "kmnist": "accuracy grid on KMNIST (Fig. 2): every algorithm x d=0.1/0.06/0.03, static sparse, dense baselines",
    "fashion-mnist": "the KMNIST grid on Fashion-MNIST (same format; KMNIST is not available offline)",
    "higgs": "accuracy grid on HIGGS (Fig. 4): every algorithm x d=0.1/0.06/0.03, static sparse, dense baselines",
    "induced-loss": "training loss right before/after each redistribution, every dynamic algorithm at d=0.1 (Fig. 3)",
    "frequency": "redistribution every t = 1, 2, 4, 8 epochs, every dynamic algorithm at d=0.1 (Fig. 5)",
    "depth": "784-256-256-10, 784-256-128-128-128-10, 784-128x8-10, every dynamic algorithm at d=0.1 (Fig. 6)",
    "woodtaylor": "Redr-Woodtaylor lambda sweep (block 34) and block-size sweep (lambda 1) at d=0.1 (section 4.3.3)",
    "timing": "seconds per epoch on the HIGGS net at d=0.1: dense baselines, static sparse, every algorithm (Table 1)",
    "memory": "peak memory of the KMNIST-shape net with 4096-wide hidden layers, every algorithm x density and "
              "the dense nets, each in a fresh process (Table 2)",
    "synthetic": "the accuracy grid on the generated task (seconds; for tests and smoke checks)",
    "growth": "exact vs sampled growth (Gradient, Gradient-Global, Loss) at 784-256-256-10 and 784-4096-4096-10, "
              "Fashion-MNIST practical preset (issue 15; redr.experiments.growth)",
    "scale": "issue 15's width ladder: 784-W-W-10 at a constant fan-in, W = 4,096 ... 1,048,576, Redr-Random and "
             "Redr-Gradient-Global, each in a fresh process (time, peak memory, accuracy, the dense twin's memory)",
}

#: ``scale``: the width ladder (two hidden layers of W neurons), its fan-in, algorithms and budget. Fan-in 16:
#: the work and memory of a step are ``O(batch x fan-in x W)``, and 16 keeps the 1M-wide net (2 x 16.8M hidden
#: weights) inside this machine's budget; the last layer is dense (``dense_last``) so every hidden neuron
#: reaches the 10 outputs (10.5M weights at W = 1M; at fan-in 16 only 160 of W neurons would).
SCALE_WIDTHS = (4096, 16384, 65536, 262144, 1048576)
SCALE_FAN_IN = 16
SCALE_MODELS = ("random", "gradient-global", "dense-neuron")
#: Batch 128 bounds the activations of the 1M-wide net (each hidden activation is 128 x 1M floats = 512 MiB);
#: the rest is the practical Fashion-MNIST preset (lr 3e-3, no augmentation), for every rung and the dense net.
#: The loss right before/after a redistribution is measured on 512 rows, not 4096 (at W = 1M a forward pass of
#: 4096 rows costs minutes, twice per redistribution).
SCALE_SETTINGS = {"batch_size": 128, "augment": False, "induced_loss_rows": 512}
SCALE_EPOCHS = 2
#: The accuracy reference: the paper's 784-256-256-10 dense at the same settings and epochs.
SCALE_DENSE_HIDDEN = (256, 256)


@dataclass(frozen=True)
class Quick:
    """What ``--quick`` shrinks, per dataset (None = unchanged)."""

    epochs: Optional[int] = None
    train_rows: Optional[int] = None
    test_rows: Optional[int] = None
    seeds: Optional[int] = None  # the default of --seeds (an explicit --seeds wins)

    def describe(self) -> str:
        parts = []
        if self.epochs is not None:
            parts.append(f"{self.epochs} epochs")
        if self.train_rows is not None:
            parts.append(f"the first {self.train_rows:,} training rows")
        if self.test_rows is not None:
            parts.append(f"{self.test_rows:,} test rows")
        if self.seeds is not None:
            parts.append(f"{self.seeds} seed{'s' if self.seeds != 1 else ''} unless --seeds is given")
        return ", ".join(parts) or "nothing"


#: The --quick budget, sized from epoch times measured on the 2-core CPU (docs/reproduce.md): about 7 min
#: (images) and 12 min (HIGGS) of one core's time for the whole grid with 3 seeds. Everything else
#: (architectures, batch sizes, learning rates, the schedule's shape, seeds, every algorithm and density,
#: the dense baselines, augmentation, the test sets) stays the paper's setup.
QUICK = {
    "kmnist": Quick(epochs=10, train_rows=20_000),
    "fashion-mnist": Quick(epochs=10, train_rows=20_000),
    "higgs": Quick(epochs=10),
    "synthetic": Quick(epochs=2),
}
#: Timing and memory need few epochs: they measure, they do not train to convergence.
MEASURE_EPOCHS = {"timing": 5, "memory": 2}
QUICK_MEASURE_EPOCHS = {"timing": 3, "memory": 2}
#: Memory runs only need a few steps per epoch: the peak does not depend on the epoch length, and the
#: data's own footprint is measured separately (the baseline) and subtracted.
MEMORY_ROWS = {"train_rows": 8192, "test_rows": 2048}


@dataclass
class Cell:
    """One run of a grid: ``name`` is its directory under ``--out``."""

    name: str
    options: dict
    kind: str = "train"  # train | timing | memory | memory-baseline
    experiments: list = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return int(self.options.get("epochs") or PRESETS[self.options.get("preset") or self.options["dataset"]]["epochs"])

    @property
    def seed(self) -> int:
        return int(self.options.get("seed", 0))


def fmt_number(value: float) -> str:
    """0.1 -> '0.1', 1.0 -> '1', 1e-4 -> '0.0001' (stable, readable, no trailing zeros)."""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def run_name(options: dict, prefix: str = "") -> str:
    """A readable, unique directory name for a run's options."""
    dataset, model = options["dataset"], options.get("model", "sparse")
    parts = [dataset]
    if model == "sparse":
        parts += [options.get("algorithm", "random"), f"d{fmt_number(options['density'])}"]
    elif model == "dense-param":
        parts += [model, f"d{fmt_number(options.get('density', PARAM_EQ_DENSITY))}"]
    else:
        parts.append(model)
    hidden = options.get("hidden")
    if hidden is not None and list(hidden) != list(PRESETS[options.get("preset") or dataset]["hidden"]):
        parts.append("h" + "-".join(str(h) for h in hidden))
    if options.get("redistribute_every", 1) != 1:
        parts.append(f"t{options['redistribute_every']}")
    algo = options.get("algorithm_options") or {}
    short = {"block_size": "B", "dampening": "lam"}
    for key in sorted(algo):
        parts.append(f"{short.get(key, key)}{fmt_number(algo[key]) if isinstance(algo[key], float) else algo[key]}")
    parts.append(f"s{options.get('seed', 0)}")
    return (prefix + "_" if prefix else "") + "_".join(parts)


def model_options(model: str, density: float) -> dict:
    """RunConfig options of one grid entry: a sparse algorithm name, or a dense baseline."""
    if model in DENSE_MODELS:  # the density only sizes the parameter-equivalent net: always the paper's 0.1
        return {"model": model, "algorithm": "none", "density": PARAM_EQ_DENSITY}
    return {"model": "sparse", "algorithm": model, "density": density}


def _parse_models(models: Optional[Sequence[str]], allowed: Sequence[str], experiment: str) -> list[str]:
    if models is None:
        return list(allowed)
    bad = [m for m in models if m not in GRID_MODELS]
    if bad:
        raise UsageError(f"--algorithms: unknown name(s) {', '.join(bad)}; choose from {', '.join(GRID_MODELS)}")
    off = [m for m in models if m not in allowed]
    if off:
        raise UsageError(f"--algorithms {', '.join(off)}: not part of the {experiment} experiment "
                         f"(it runs {', '.join(allowed)})")
    return list(dict.fromkeys(models))


def _parse_densities(densities: Optional[Sequence[float]], allowed: Sequence[float], experiment: str) -> list[float]:
    if densities is None:
        return list(allowed)
    bad = [d for d in densities if not 0 < d <= 1]
    if bad:
        raise UsageError(f"--densities must be in (0, 1], got {', '.join(map(str, bad))}")
    return list(dict.fromkeys(float(d) for d in densities))


def _densities_for(model: str, densities, allowed, experiment: str) -> list[float]:
    """A sparse model runs at every density; a dense baseline once (its size is matched to d=0.1)."""
    if model in DENSE_MODELS:
        return [PARAM_EQ_DENSITY]
    return _parse_densities(densities, allowed, experiment)


def check_choices(datasets: Sequence[str], seeds: Optional[int], epochs: Optional[int]) -> None:
    """The choices every experiment takes: known datasets, at least one seed and one epoch."""
    named = [p for p, options in PRESETS.items() if options["dataset"] == p]  # not fashion-mnist-cnn
    for name in datasets:
        if name not in named:
            raise UsageError(f"--dataset {name}: unknown; choose from {', '.join(named)}")
    if seeds is not None and seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")


def scale_cells(*, widths: Optional[Sequence[int]] = None, models: Optional[Sequence[str]] = None,
                epochs: Optional[int] = None, fan_in: Optional[int] = None, seeds: Optional[int] = None,
                dataset: str = "fashion-mnist", train_rows: Optional[int] = None,
                test_rows: Optional[int] = None) -> list[Cell]:
    """The ``scale`` ladder: every width x sparse algorithm, then the dense 784-256-256-10 reference (once),
    in the order given (default: widths ascending); every run in a fresh process (``kind="scale"``).
    ``train_rows``/``test_rows``: the first rows of each split only (named in the run: ``_r``/``_t``)."""
    widths = list(dict.fromkeys(widths or SCALE_WIDTHS))
    if any(not isinstance(w, int) or w < 1 for w in widths):
        raise UsageError(f"--widths must be whole numbers >= 1, got {widths}")
    models = _parse_scale_models(models)
    fan_in = SCALE_FAN_IN if fan_in is None else fan_in
    base = {"dataset": dataset, **SCALE_SETTINGS, "epochs": epochs or SCALE_EPOCHS}
    rows = ""
    for key, tag, value in (("train_rows", "r", train_rows), ("test_rows", "t", test_rows)):
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be a whole number >= 1, got {value!r}")
            base[key] = value
            rows += f"_{tag}{value}"
    cells = []
    for seed in range(seeds or 1):
        for width in widths:
            for model in (m for m in models if m != "dense-neuron"):
                options = {**base, "seed": seed, "model": "sparse", "algorithm": model, "hidden": [width, width],
                           "fan_in": fan_in, "dense_last": True}
                name = f"scale_{dataset}_{model}_w{width}_k{fan_in}{rows}_s{seed}"
                cells.append(Cell(name=name, options=options, kind="scale", experiments=["scale"]))
        if "dense-neuron" in models:
            options = {**base, "seed": seed, "model": "dense-neuron", "algorithm": "none",
                       "hidden": list(SCALE_DENSE_HIDDEN)}
            name = f"scale_{dataset}_dense-neuron_h{'-'.join(map(str, SCALE_DENSE_HIDDEN))}{rows}_s{seed}"
            cells.append(Cell(name=name, options=options, kind="scale", experiments=["scale"]))
    return cells


def _parse_scale_models(models: Optional[Sequence[str]]) -> list[str]:
    if models is None:
        return list(SCALE_MODELS)
    bad = [m for m in models if m not in SCALE_MODELS]
    if bad:
        raise UsageError(f"--algorithms {', '.join(bad)}: not part of the scale experiment (it runs "
                         f"{', '.join(SCALE_MODELS)})")
    return list(dict.fromkeys(models))


def build_cells(experiment: str, *, seeds: Optional[int] = None, epochs: Optional[int] = None, quick: bool = False,
                datasets: Optional[Sequence[str]] = None, models: Optional[Sequence[str]] = None,
                densities: Optional[Sequence[float]] = None, widths: Optional[Sequence[int]] = None,
                fan_in: Optional[int] = None, train_rows: Optional[int] = None,
                test_rows: Optional[int] = None) -> list[Cell]:
    """The runs of ``experiment``. ``models``/``densities`` restrict the grid (default: the paper's);
    ``widths``/``fan_in``: the ``scale`` ladder's (:func:`scale_cells`)."""
    if experiment not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    if experiment == "growth":  # its own module (it imports this one): redr.experiments.growth.growth_cells
        raise UsageError("the growth experiment's runs come from redr.experiments.growth.growth_cells")
    if experiment != "scale" and any(v is not None for v in (widths, fan_in, train_rows, test_rows)):
        raise UsageError(f"--widths applies to the growth and scale experiments only, --fan-in, --train-rows and "
                         f"--test-rows to the scale experiment only; not to {experiment}")
    if experiment == "scale":
        if densities is not None or quick:
            raise UsageError("--densities and --quick do not apply to scale (use --fan-in, --widths, --epochs)")
        datasets = list(datasets or ["fashion-mnist"])
        if len(datasets) != 1 or datasets[0] not in PRESETS:
            raise UsageError(f"--dataset: scale runs on one dataset, e.g. fashion-mnist, got {', '.join(datasets)}")
        check_choices(datasets, seeds, epochs)
        return scale_cells(widths=widths, models=models, epochs=epochs, fan_in=fan_in, seeds=seeds, dataset=datasets[0],
                           train_rows=train_rows, test_rows=test_rows)
    if experiment in ACCURACY_EXPERIMENTS:
        if datasets:
            raise UsageError(f"--dataset does not apply to {experiment} (the experiment is named after its dataset)")
        datasets = [experiment]
    else:
        datasets = list(datasets or DEFAULT_DATASETS[experiment])
    check_choices(datasets, seeds, epochs)

    cells: list[Cell] = []

    def add(options: dict, kind: str = "train", prefix: str = ""):
        name = run_name(options, prefix)
        cells.append(Cell(name=name, options=options, kind=kind, experiments=[experiment]))

    for dataset in datasets:
        q = QUICK.get(dataset, Quick()) if quick else Quick()
        n_seeds = seeds if seeds is not None else (q.seeds or 3)
        base = {"dataset": dataset}
        if paper_preset(dataset) != dataset:  # Fashion-MNIST: the paper's KMNIST setup, not the practical preset
            base["preset"] = paper_preset(dataset)
        if experiment in ("timing", "memory"):
            n_seeds = seeds if seeds is not None else 1
            base["epochs"] = epochs or (QUICK_MEASURE_EPOCHS if quick else MEASURE_EPOCHS)[experiment]
        else:
            base["epochs"] = epochs or q.epochs or PRESETS[paper_preset(dataset)]["epochs"]
            for key in ("train_rows", "test_rows"):
                if getattr(q, key) is not None:
                    base[key] = getattr(q, key)
        for seed in range(n_seeds):
            seeded = {**base, "seed": seed}
            if experiment in ACCURACY_EXPERIMENTS:
                for model in _parse_models(models, GRID_MODELS, experiment):
                    for d in _densities_for(model, densities, DENSITIES, experiment):
                        add({**seeded, **model_options(model, d)})
            elif experiment == "induced-loss":
                for model in _parse_models(models, DYNAMIC_ALGORITHMS, experiment):
                    for d in _parse_densities(densities, (0.1,), experiment):
                        add({**seeded, **model_options(model, d)})
            elif experiment == "frequency":
                for model in _parse_models(models, DYNAMIC_ALGORITHMS, experiment):
                    for d in _parse_densities(densities, (0.1,), experiment):
                        for t in FREQUENCIES:
                            add({**seeded, **model_options(model, d), "redistribute_every": t})
            elif experiment == "depth":
                for model in _parse_models(models, DYNAMIC_ALGORITHMS, experiment):
                    for d in _parse_densities(densities, (0.1,), experiment):
                        for hidden in DEPTH_HIDDEN:
                            options = {**seeded, **model_options(model, d)}
                            if list(hidden) != list(PRESETS[paper_preset(dataset)]["hidden"]):
                                options["hidden"] = list(hidden)
                            add(options)
            elif experiment == "woodtaylor":
                _parse_models(models, ("woodtaylor",), experiment)
                points = [(WOODTAYLOR_BLOCK, lam) for lam in WOODTAYLOR_LAMBDAS]
                points += [(b, WOODTAYLOR_LAMBDA) for b in WOODTAYLOR_BLOCKS if (b, WOODTAYLOR_LAMBDA) not in points]
                for d in _parse_densities(densities, (0.1,), experiment):
                    for block, lam in points:
                        add({**seeded, **model_options("woodtaylor", d),
                             "algorithm_options": {"block_size": block, "dampening": lam}})
            elif experiment == "timing":
                for model in _parse_models(models, GRID_MODELS, experiment):
                    for d in _densities_for(model, densities, (0.1,), experiment):
                        add({**seeded, **model_options(model, d)}, kind="timing", prefix="timing")
            elif experiment == "memory":
                shape = {"hidden": list(MEMORY_HIDDEN), **MEMORY_ROWS}
                # the data, interpreter and kernels alone (subtracted from every peak), once per seed
                cells.append(Cell(name=f"memory_{dataset}_baseline_s{seed}", kind="memory-baseline",
                                  options={**seeded, **shape, **model_options("dense-neuron", PARAM_EQ_DENSITY)},
                                  experiments=[experiment]))
                for model in _parse_models(models, GRID_MODELS, experiment):
                    for d in _densities_for(model, densities, DENSITIES, experiment):
                        add({**seeded, **shape, **model_options(model, d)}, kind="memory", prefix="memory")
    names = [c.name for c in cells]
    assert len(names) == len(set(names)), "run names must be unique"
    return cells
