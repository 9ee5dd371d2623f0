"""Peak memory of building a sparse MLP against the model's own bytes (issue 15, item 4: <= ~1.5x).

    flock /tmp/redr-bench.lock python benchmarks/build_peak.py --nets 784-20000-20000-10:500 784-65536-65536-10:16 \
        --src /work/main/src src

Each (net, source tree) is built in a fresh subprocess (``PYTHONPATH=<src>``, glibc's mmap threshold fixed at
128 KiB as ``redr bench memory`` does, so that freed temporaries leave the resident set): import torch and
redr, build a tiny net first (numba's compiled code and torch's kernels loaded), then the baseline (VmRSS,
VmHWM reset to it through ``/proc/self/clear_refs``), then ``build_mlp(sizes, fan_in=K, generator=seed 0)``
timed. **peak** = VmHWM - baseline; **persistent** = the exact bytes of the model's tensors (parameters and
every buffer, the transposed companion included), each storage once. Giving two source trees (e.g. main's and
this checkout's) compares them in one run; each net's models must then be equal (checked by a digest).
Prints a table and one JSON line per build.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import gc, hashlib, json, sys, time
import torch
from redr.sparse.convert import build_mlp
from redr.training.memory import reset_peak_memory

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

sizes, fan_in = json.loads(sys.argv[1]), int(sys.argv[2])
build_mlp([784, 64, 64, 10], fan_in=4, generator=torch.Generator().manual_seed(1))  # warm-up
gc.collect()
base = status("VmRSS")
reset = reset_peak_memory(torch.device("cpu"))
start = time.perf_counter()
model = build_mlp(sizes, fan_in=fan_in, generator=torch.Generator().manual_seed(0))
seconds = time.perf_counter() - start
peak = status("VmHWM") - base
storages, digest = {}, hashlib.sha256()
for name, t in list(model.named_parameters()) + list(model.named_buffers()):
    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    if name.split(".")[-1] in ("values", "bias", "weight", "crow", "col"):
        digest.update(name.encode() + t.detach().contiguous().view(torch.uint8).numpy().tobytes())
print(json.dumps(dict(peak_bytes=peak, persistent_bytes=sum(storages.values()), seconds=seconds, reset=reset,
                      nnz=sum(m.nnz for m in model.modules() if hasattr(m, "nnz")), digest=digest.hexdigest()[:16])))
"""


def measure(net: str, src: str) -> dict:
    spec, _, fan_in = net.partition(":")
    sizes = [int(s) for s in spec.split("-")]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(sizes), fan_in or "16"], env=env,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(net=spec, fan_in=int(fan_in or 16), src=src, ratio=result["peak_bytes"] / result["persistent_bytes"])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=["784-20000-20000-10:500", "784-65536-65536-10:16"],
                   help="SIZES:FAN_IN, e.g. 784-65536-65536-10:16")
    p.add_argument("--src", nargs="+", default=["src"], help="source trees to compare (PYTHONPATH of each build)")
    args = p.parse_args()
    with open("/proc/loadavg") as fh:
        print(f"load average at start: {' '.join(fh.read().split()[:3])}", flush=True)
    print(f"{'net':<26} {'fan-in':>6} {'src':<20} {'nnz':>12} {'persistent MiB':>14} {'peak MiB':>10} {'peak/pers':>9} "
          f"{'build s':>8} digest", flush=True)
    records = []
    for net in args.nets:
        for src in args.src:
            r = measure(net, src)
            records.append(r)
            print(f"{r['net']:<26} {r['fan_in']:>6} {r['src'][-20:]:<20} {r['nnz']:>12,} {r['persistent_bytes'] / 2**20:>14.1f} "
                  f"{r['peak_bytes'] / 2**20:>10.1f} {r['ratio']:>9.2f} {r['seconds']:>8.2f} {r['digest']}", flush=True)
    with open("/proc/loadavg") as fh:
        print(f"load average at end: {' '.join(fh.read().split()[:3])}", flush=True)
    for r in records:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
