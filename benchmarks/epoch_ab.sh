#!/bin/bash
# Old vs new source trees alternating, one epoch each on the first ROWS training rows (Fashion-MNIST, its preset).
# Run it under flock /tmp/redr-bench.lock; SRC is a source folder (PYTHONPATH), e.g. a detached worktree of the old commit.
# usage: epoch_ab.sh HIDDEN DENSITY ROWS ROUNDS LABEL:SRC ...   runs each source once per round, alternating; prints epoch_seconds
mkdir -p ${AB_OUT:-/tmp/epoch-ab}
H="$1"; D="$2"; ROWS="$3"; ROUNDS="$4"; shift 4
[ -n "$VIRTUAL_ENV" ] || . /work/venv/bin/activate
for r in $(seq 1 $ROUNDS); do
  for pair in "$@"; do
    label=${pair%%:*}; src=${pair#*:}
    out=${AB_OUT:-/tmp/epoch-ab}/ab-$label-$H-$r; rm -rf $out
    env -u THP_MEM_ALLOC_ENABLE PYTHONPATH=$src python -m redr train --dataset fashion-mnist --hidden $H $H --density $D --algorithm random --epochs 1 --train-rows $ROWS --test-rows 256 --data-dir ${REDR_DATA_DIR:-/work/shared/data} --out $out --no-progress > $out.log 2>&1
    es=$(python -c "import csv; r=list(csv.DictReader(open('$out/metrics.csv')))[-1]; print(r['epoch_seconds'], r.get('redistribution_seconds'))")
    echo "round $r $label hidden $H d=$D rows $ROWS epoch_s/redistr_s $es load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
