"""Pieces shared by the benchmark suites: the environment record, timing, nets and data, JSON lines, tables."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from redr import runtime
from redr.errors import UsageError

# ---------------------------------------------------------------------------------------------------- environment

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/redr


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def git_state() -> dict:
    """The commit of the checkout the package runs from, and its modified tracked files (a dirty tree
    means the numbers are for the commit plus those edits)."""
    root = PACKAGE_ROOT.parents[1]

    def git(*argv: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty_files": []}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    dirty = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": commit.strip(), "dirty_files": dirty}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


#: Environment variables that change thread behaviour (and so the timings); recorded when set.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
              "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "CUDA_VISIBLE_DEVICES")


def environment(device: torch.device) -> dict:
    """What every JSON line records about where it was measured."""
    try:
        import numba

        numba_version, numba_threads = numba.__version__, numba.get_num_threads()
    except ImportError:  # pragma: no cover - numba missing
        numba_version, numba_threads = None, None
    git = git_state()
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba_threads,
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "numba_version": numba_version,
        "python_version": platform.python_version(),
        "commit": git["commit"],
        "dirty_files": git["dirty_files"],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "command": " ".join(sys.argv),
    }


def resolve_device(name: Optional[str]) -> torch.device:
    """``--device`` (the benchmarks' default: cpu), checked by :func:`redr.runtime.resolve_device`; a bare
    ``cuda`` names the current GPU, so that every record says which one."""
    device = runtime.resolve_device(name or "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ---------------------------------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how noisy the repeats were."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / mid if mid > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------- algorithms

def algorithm_availability(names: Iterable[str]) -> list[tuple[str, Optional[str]]]:
    """``(name, None)`` for an algorithm whose module imports, ``(name, reason)`` for one that does not (yet)."""
    from redr.redistribution.algorithms.registry import ALGORITHMS, algorithm_class

    out = []
    for name in names:
        if name not in ALGORITHMS:
            raise UsageError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
        try:
            algorithm_class(name)
        except Exception as exc:  # a module being written may fail in any way: report it and go on
            out.append((name, f"{ALGORITHMS[name].target} does not import: {type(exc).__name__}: {exc}"))
        else:
            out.append((name, None))
    return out


def runnable_algorithms(names: Iterable[str]) -> list[str]:
    """The algorithms among ``names`` whose modules import; a line is printed for each one skipped."""
    runnable = []
    for name, reason in algorithm_availability(names):
        if reason:
            print_flush(f"skip algorithm {name}: {reason}")
        else:
            runnable.append(name)
    return runnable


# ---------------------------------------------------------------------------------------------------- nets and data

@dataclass(frozen=True)
class NetSpec:
    """One of the paper's nets, as the epoch and memory suites train it."""

    name: str
    sizes: tuple
    batch_size: int
    rows: int  # rows per epoch
    task: str  # "binary" (one logit, BCE) or "multiclass" (cross-entropy)
    dense_last: bool
    lr: float

    def to_dict(self) -> dict:
        return {**asdict(self), "sizes": list(self.sizes)}


NETS = {
    "higgs": NetSpec("higgs", (21, 256, 256, 256, 1), 128, 500_000, "binary", True, 1e-3),
    "kmnist": NetSpec("kmnist", (784, 256, 256, 10), 512, 60_000, "multiclass", False, 5e-4),
    "wide": NetSpec("wide", (784, 4096, 4096, 10), 512, 60_000, "multiclass", False, 5e-4),
}

#: ``--quick``: the same structure (input width, depth, dense last layer, task) at tiny sizes.
QUICK_NETS = {
    "higgs": NetSpec("higgs", (21, 48, 48, 48, 1), 64, 256, "binary", True, 1e-3),
    "kmnist": NetSpec("kmnist", (784, 64, 64, 10), 128, 256, "multiclass", False, 5e-4),
    "wide": NetSpec("wide", (784, 256, 256, 10), 128, 256, "multiclass", False, 5e-4),
}


def net_specs(names: Sequence[str], quick: bool, higgs_rows: Optional[int] = None,
              image_rows: Optional[int] = None) -> list[NetSpec]:
    table = QUICK_NETS if quick else NETS
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UsageError(f"unknown net(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    specs = []
    for name in names:
        spec = table[name]
        rows = higgs_rows if name == "higgs" else image_rows
        if rows is not None:
            spec = NetSpec(**{**asdict(spec), "rows": rows})
        specs.append(spec)
    return specs


def synthetic_dataset(spec: NetSpec, rows: int, device: torch.device, seed: int = 0, test_rows: int = 256):
    """Random data of the net's shapes (no files): images in [0, 1) with 10 classes, or HIGGS-like
    standard-normal rows with 0/1 targets. Only the shapes matter for speed and memory."""
    from redr.data.dataset import Dataset

    g = torch.Generator().manual_seed(seed)
    n = rows + test_rows
    features, outputs = spec.sizes[0], spec.sizes[-1]
    if spec.task == "binary":
        x = torch.randn(n, features, generator=g)
        y = torch.randint(0, 2, (n,), generator=g).float()
        classes = 1
    else:
        x = torch.rand(n, features, generator=g)
        y = torch.randint(0, outputs, (n,), generator=g)
        classes = outputs
    x, y = x.to(device), y.to(device)
    info = {"dataset": f"synthetic-{spec.name}", "rows_train": rows, "rows_test": test_rows, "seed": seed}
    return Dataset(x[:rows], y[:rows], x[rows:], y[rows:], task=spec.task, num_classes=classes,
                   image_shape=None, info=info)


def make_trainer(spec: NetSpec, dataset, device: torch.device, model: str, algorithm: str = "none",
                 density: float = 0.1, backend: str = "auto", epochs: int = 100, seed: int = 0):
    """The training engine's :class:`~redr.training.trainer.Trainer` for one configuration, on ``dataset``.

    ``epochs`` only sets the redistribution schedule (epoch 1 moves ``alpha`` ~= 0.5, the largest step).
    Augmentation is off; the induced-loss subset is one batch (it is evaluated outside the timed parts).
    """
    from redr.training.config import RunConfig
    from redr.training.trainer import Trainer

    config = RunConfig.from_options(
        preset="synthetic", dataset="synthetic", model=model, algorithm=algorithm, density=density, epochs=epochs,
        batch_size=spec.batch_size, lr=spec.lr, hidden=list(spec.sizes[1:-1]), dense_last=spec.dense_last,
        augment=False, train_rows=dataset.train_x.shape[0], test_rows=dataset.test_x.shape[0], device=str(device),
        backend=backend, seed=seed, induced_loss_rows=min(spec.batch_size, dataset.train_x.shape[0]))
    return Trainer(config, None, progress=False, log=lambda *_: None, dataset=dataset)


# ---------------------------------------------------------------------------------------------------- output

def default_json_path(suite: str) -> Path:
    return Path("benchmarks") / "results" / f"{suite}-{date.today().isoformat()}.jsonl"


class JsonLines:
    """Appends one JSON object per line, flushed at once (a run cut short keeps what it measured)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=_json_default, allow_nan=True) + "\n")
        self.count += 1


def _json_default(obj):
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def make_record(suite: str, kind: str, env: dict, config: dict, results: dict, ratios: dict) -> dict:
    return {"suite": suite, "kind": kind, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **env, "config": config, "results": results, "ratios": ratios}


def rounded(x: Optional[float], digits: int = 5):
    """To ``digits`` significant digits: times span milliseconds (quick runs) to minutes."""
    return None if x is None else float(f"{float(x):.{digits}g}")


def ratio(x: Optional[float]):
    """A ratio to 4 significant digits (a tiny ratio keeps its precision)."""
    return None if x is None else float(f"{float(x):.4g}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain fixed-width table; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False
               for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3f}"
    return str(v)


def mib(n_bytes: Optional[float]) -> Optional[float]:
    return None if n_bytes is None else n_bytes / 2**20


def parse_list(text: Optional[str], convert=str, name: str = "list") -> Optional[list]:
    if text is None:
        return None
    try:
        items = [convert(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--{name}: cannot read {text!r} ({exc})") from None
    if not items:
        raise UsageError(f"--{name}: empty list")
    return items


def parse_shapes(text: Optional[str]) -> Optional[list[tuple[int, int]]]:
    """``784x256,4096x4096`` -> [(784, 256), (4096, 4096)] as (in_features, out_features)."""
    if text is None:
        return None
    shapes = []
    for part in parse_list(text, str, "shapes"):
        try:
            a, b = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise UsageError(f"--shapes: {part!r} is not INxOUT (e.g. 784x256)") from None
        if a < 1 or b < 1:
            raise UsageError(f"--shapes: {part!r} needs positive sizes")
        shapes.append((a, b))
    return shapes


def print_flush(*args) -> None:
    print(*args, flush=True)
