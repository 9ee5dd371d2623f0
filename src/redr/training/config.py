"""Run configuration: the paper's presets and one shared validation for the CLI and the Python API.

A :class:`RunConfig` holds everything needed to rerun a training run. ``RunConfig.from_options`` fills
unset fields from the preset and validates the result; every error is a :class:`~redr.errors.UsageError`
with one line that names the option and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from redr.data.registry import DATASETS
from redr.errors import UsageError
from redr.runtime import resolve_device

MODEL_KINDS = ("sparse", "dense-neuron", "dense-param")
DATASET_NAMES = (*DATASETS, "synthetic")
IMAGE_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.image_shape is not None)


def dataset_shape(name: str) -> tuple[int, int]:
    """(input features, network outputs) of a named dataset, so that options are checked before any data is read."""
    if name == "synthetic":
        from redr.data import synthetic

        return synthetic.FEATURES, synthetic.CLASSES
    spec = DATASETS[name]
    return spec.num_features, 1 if spec.task == "binary" else spec.num_classes


#: The paper's setups (section 3.2 / 3.3), and a practical one for Fashion-MNIST (not in the paper).
#: KMNIST's epoch count is not stated in the paper: we use 30 (Adam at lr 5e-4 with augmentation has
#: flattened by then in our Fashion-MNIST runs; see README). ``fashion-mnist`` is what ``redr train
#: --dataset fashion-mnist`` starts from: chosen by validation accuracy (README, "Choosing the practical
#: preset"); the paper's experiments on Fashion-MNIST use ``kmnist`` (:data:`PAPER_PRESETS`).
PRESETS = {
    "kmnist": dict(dataset="kmnist", hidden=[256, 256], batch_size=512, lr=5e-4, epochs=30, augment=True,
                   dense_last=False, train_rows=None, test_rows=None),
    "fashion-mnist": dict(dataset="fashion-mnist", hidden=[256, 256], batch_size=256, lr=3e-3, epochs=20,
                          augment=False, dense_last=False, train_rows=None, test_rows=None, init="kaiming"),
    # the CNN of ``--arch cnn`` on Fashion-MNIST (not in the paper): chosen by validation accuracy
    # (results/cnn/README.md); ``--arch cnn`` on fashion-mnist starts from it when no --preset is given
    "fashion-mnist-cnn": dict(dataset="fashion-mnist", arch="cnn", hidden=[256, 256], batch_size=128, lr=3e-3,
                              epochs=15, augment=False, dense_last=False, train_rows=None, test_rows=None,
                              init="kaiming"),
    "higgs": dict(dataset="higgs", hidden=[256, 256, 256], batch_size=128, lr=1e-3, epochs=80, augment=False,
                  dense_last=True, train_rows=500_000, test_rows=100_000),
    # a small generated task for tests and quick checks (no files needed)
    "synthetic": dict(dataset="synthetic", hidden=[64, 64], batch_size=64, lr=1e-3, epochs=3, augment=False,
                      dense_last=False, train_rows=2048, test_rows=512),
}
#: The paper's setup for a dataset whose own preset is a practical one (``redr reproduce`` uses these).
PAPER_PRESETS = {"fashion-mnist": "kmnist"}


def paper_preset(dataset: str) -> str:
    """The preset of the paper's experiments on ``dataset`` (Fashion-MNIST: the paper's KMNIST setup)."""
    return PAPER_PRESETS.get(dataset, dataset)


def default_preset(dataset: Optional[str], arch: Optional[str]) -> str:
    """The preset of a run given no --preset: ``<dataset>-cnn`` for ``--arch cnn`` where there is one, else the
    preset named like the dataset, else RunConfig's."""
    if arch == "cnn" and f"{dataset}-cnn" in PRESETS:
        return f"{dataset}-cnn"
    return dataset if dataset in PRESETS else RunConfig.preset


@dataclass
class RunConfig:
    preset: str = "kmnist"
    dataset: Optional[str] = None
    model: str = "sparse"
    arch: str = "mlp"  # issue 17: "mlp" (the paper's) or "cnn" (redr.sparse.conv_net; images only)
    algorithm: str = "random"
    algorithm_options: dict = field(default_factory=dict)
    density: float = 0.1  # not used when fan_in is set
    distribution: str = "uniform"  # how density is spread over the sparse layers: uniform or erk
    fan_in: Optional[int] = None  # instead of a density: every neuron of every sparse layer gets fan_in inputs
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    hidden: Optional[list] = None
    dense_last: Optional[bool] = None
    redistribute_every: int = 1
    alpha0: float = 0.5
    end_fraction: float = 0.75
    redistribution_batches: int = 1
    induced_loss_rows: int = 4096
    augment: Optional[bool] = None
    augment_options: dict = field(default_factory=dict)
    train_rows: Optional[int] = None
    test_rows: Optional[int] = None
    seed: int = 0
    device: Optional[str] = None
    backend: str = "auto"
    data_dir: Optional[str] = None
    download: bool = True
    on_nonfinite: str = "stop"  # or "skip-batch"
    init: Optional[str] = None  # values: paper or kaiming (redr.sparse.init); default paper, dense baselines kaiming
    validation_rows: Optional[int] = None  # training rows held out (never trained on) and evaluated as val_acc

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_options(cls, **options) -> "RunConfig":
        """Fill unset fields from the preset and validate; unknown option names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        given = {k: v for k, v in options.items() if v is not None}
        if "density" in given and "fan_in" in given:
            raise UsageError("give --density or --fan-in, not both (--fan-in K gives every neuron K inputs)")
        preset = given.get("preset") or default_preset(given.get("dataset"), given.get("arch"))
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        merged = {**PRESETS[preset], **given, "preset": preset}
        if "algorithm" not in given:  # sparse nets default to Redr-Random, dense baselines have none
            merged["algorithm"] = "random" if merged.get("model", cls.model) == "sparse" else "none"
        if merged.get("init") is None:  # the sparse net: the paper's rule; the dense baselines: nn.Linear's
            merged["init"] = "paper" if merged.get("model", cls.model) == "sparse" else "kaiming"
        config = cls(**merged)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in with_legacy_defaults(data).items() if k in names})

    def sizes(self, num_features: int, num_outputs: int) -> list[int]:
        return [num_features, *self.hidden, num_outputs]

    # ------------------------------------------------------------------ validation
    def validate(self, *, custom_data: bool = False) -> None:
        """Every option's type and range and the combinations that make no sense; one UsageError line.

        Shared by ``redr train`` (also on ``--resume``) and the Python API (``RunConfig.from_options``,
        :func:`redr.training.api.train`, the :class:`Trainer`). See docs/reliability.md for the list and
        the messages. ``custom_data``: the trainer was given its own dataset, so the checks that assume the
        named dataset's shape (images or not, input features) are left to the trainer, which has the data.
        """
        from redr.redistribution.algorithms.registry import ALGORITHMS, algorithm_options, make_algorithm
        from redr.sparse.distribution import check_density

        def bad(msg):
            raise UsageError(msg)

        def flag(name):
            return "--" + name.replace("_", "-")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def whole(name, low):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                bad(f"{flag(name)} must be a whole number >= {low}, got {value!r}")

        if self.preset not in PRESETS:
            bad(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.dataset not in DATASET_NAMES:
            bad(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
        if self.model not in MODEL_KINDS:
            bad(f"unknown model kind {self.model!r}; choose one of {', '.join(MODEL_KINDS)}")
        if not isinstance(self.algorithm, str) or self.algorithm not in ALGORITHMS:
            bad(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        check_density(self.density)
        self.layer_distribution()  # --distribution and --fan-in (their fit to the layers: check_layer_sizes)
        for name, low in (("epochs", 1), ("batch_size", 1), ("redistribute_every", 1), ("redistribution_batches", 1),
                          ("induced_loss_rows", 1), ("seed", 0)):
            whole(name, low)
        if self.seed >= 2**63:
            bad(f"--seed must be below 2**63, got {self.seed}")
        if not is_number(self.lr) or not 0 < self.lr < 1e30:
            bad(f"--lr must be a positive number below 1e30 (Adam's first step, 10 x lr, must fit a float32), got {self.lr!r}")
        if not isinstance(self.hidden, (list, tuple)) or not self.hidden or any(not is_int(h) or h < 1 for h in self.hidden):
            bad(f"--hidden needs one or more layer sizes >= 1, got {self.hidden!r}")
        self.hidden = list(self.hidden)
        for name in ("alpha0", "end_fraction"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1:
                bad(f"{flag(name)} must be in [0, 1], got {value!r}")
        for name in ("train_rows", "test_rows"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                bad(f"{flag(name)} must be a whole number >= 1, got {value!r}")
        for name in ("dense_last", "augment", "download"):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name} must be True or False, got {getattr(self, name)!r}")
        from redr.sparse.init import INITS

        if self.init not in INITS:
            bad(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.validation_rows is not None and (not is_int(self.validation_rows) or self.validation_rows < 1):
            bad(f"--validation-rows must be a whole number >= 1, got {self.validation_rows!r}")
        if self.on_nonfinite not in ("stop", "skip-batch"):
            bad(f"--on-nonfinite must be 'stop' or 'skip-batch', got {self.on_nonfinite!r}")
        from redr.sparse.kernels import BACKENDS

        if self.backend not in BACKENDS:
            bad(f"--backend must be {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}, got {self.backend!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, (str, os.PathLike)):
            bad(f"--data-dir must be a path, got {self.data_dir!r}")
        if self.device is not None:
            resolve_device(self.device)
        if not isinstance(self.algorithm_options, dict) or not isinstance(self.augment_options, dict):
            bad("algorithm_options and augment_options must be dicts")

        # combinations
        if self.augment and not custom_data and self.dataset not in IMAGE_DATASETS:
            what = "HIGGS rows are not images" if self.dataset == "higgs" else f"{self.dataset} has no image shape"
            bad(f"--augment applies to image datasets only ({what})")
        if self.augment_options and not self.augment:
            bad(f"augmentation option(s) {', '.join(sorted(self.augment_options))} need --augment")
        if self.augment_options:
            from redr.data import RandomAffine

            try:
                RandomAffine(**self.augment_options)
            except TypeError as exc:
                bad(f"augmentation options {sorted(self.augment_options)}: {exc}")
        if self.model != "sparse" and self.algorithm != "none":
            bad(f"--algorithm {self.algorithm} needs --model sparse (a dense model has nothing to redistribute)")
        accepted = algorithm_options(self.algorithm)
        wrong = sorted(set(self.algorithm_options) - set(accepted))
        if wrong:
            takes = ", ".join(accepted) or "no options"
            bad(f"option(s) {', '.join(wrong)} do not apply to --algorithm {self.algorithm} (it takes: {takes})")
        if self.algorithm_options:
            try:
                make_algorithm(self.algorithm, **self.algorithm_options)
            except UsageError:
                raise
            except (TypeError, ValueError) as exc:
                given = ", ".join(f"{k}={v!r}" for k, v in self.algorithm_options.items())
                bad(f"--algorithm {self.algorithm} rejects {given}: {exc}")
        if not custom_data and self.arch == "mlp":  # the trainer checks the sizes of the data it has (build_model);
            # a CNN's layers are checked by the builder that knows them (redr.sparse.conv_net.build_cnn)
            num_features, num_outputs = dataset_shape(self.dataset)
            self.check_layer_sizes(self.sizes(num_features, num_outputs))

    def layer_distribution(self):
        """The :class:`~redr.sparse.distribution.Distribution` of the sparse net (also the one the
        parameter-equivalent baseline is sized on): ``distribution`` at ``density``, or ``fan_in``."""
        from redr.sparse.distribution import DISTRIBUTIONS, make_distribution

        if not isinstance(self.distribution, str):  # per-layer mappings: redr.build_mlp, redr.sparsify
            raise UsageError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        return make_distribution(self.distribution, None if self.fan_in is not None else self.density, self.fan_in)

    def check_layer_sizes(self, sizes: list[int]) -> None:
        """Densities or fan-ins that cannot be built as asked.

        *Zero inputs, too many inputs*: the distribution gives each sparse layer a fan-in (a density ``d``
        gives ``round(d x in)`` inputs per neuron) and refuses one of 0 or above the layer's inputs, naming
        the layer and the fix (:mod:`redr.sparse.distribution`). Redistribution may later take every input
        of a neuron away (a dead neuron keeps its bias); that is the algorithms' choice, as in SET/RigL, and
        not checked here.

        *Room to grow*: a redistributing algorithm grows as many weights as it removes, at positions that
        are inactive before the step; a layer needs at least as many inactive positions as the largest
        removal of the schedule (so ``--density 1`` only works with ``--algorithm none``).
        """
        if self.model == "dense-neuron":
            return
        from redr.sparse.convert import mlp_layer_shapes

        layers = mlp_layer_shapes(sizes, self.dense_last)
        distribution = self.layer_distribution()
        fan_ins = distribution.fan_ins(layers)
        if self.model != "sparse" or self.algorithm == "none":
            return
        from redr.redistribution.mechanism.schedule import RedistributionSchedule

        schedule = RedistributionSchedule(self.epochs, self.redistribute_every, self.alpha0, self.end_fraction)
        alpha = max((schedule.alpha(e) for e in schedule.epochs()), default=0.0)
        for layer, per_neuron in zip(layers, fan_ins):
            nnz, free = layer.out_features * per_neuron, layer.out_features * (layer.inputs - per_neuron)
            moved = int(alpha * nnz)
            if moved > free:
                raise UsageError(
                    f"{distribution.asked} leaves layer {layer} {free} inactive positions, too few to grow the {moved} "
                    f"weights that --algorithm {self.algorithm} moves at alpha {alpha:.3g}; "
                    f"use a lower {distribution.option}, a smaller --alpha0, or --algorithm none")


#: What a saved config written before a field existed meant by its absence (the code of that time).
LEGACY_DEFAULTS = {"distribution": "uniform", "fan_in": None, "init": "paper", "validation_rows": None, "arch": "mlp"}


def with_legacy_defaults(saved: dict) -> dict:
    """A saved config with the fields it predates filled in as the code then behaved (every net: the paper's init)."""
    return {**LEGACY_DEFAULTS, **saved}
