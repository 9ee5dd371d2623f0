#!/bin/bash
# The scale ladder as run for results/scale (END/CUT1M: that session's clock), one long timed job under the bench lock (issue 15). Each reproduce call is cut off so the
# whole job ends by END (epoch seconds are measured inside the runs; a cut run keeps its finished epochs).
cd "$(dirname "$0")/.."; . /work/venv/bin/activate
export PYTHONPATH=$PWD/src REDR_DATA_DIR=/work/shared/data
OUT=/tmp/scale/runs
COMMON="--train-rows 4096 --test-rows 1000 --threads 1 --out $OUT --no-report --no-progress --data-dir /work/shared/data --no-download"
END=$(date -u -d "2026-12-08 00:57" +%s); CUT1M=$(date -u -d "2026-12-08 00:39" +%s)
left() { echo $(( $1 - $(date +%s) )); }
step() { local until=$1; shift; local t=$(left $until); if [ $t -lt 30 ]; then echo "SKIPPED (no time): $*"; return; fi
         echo "=== $(date -u +%H:%M:%S) $(uptime | sed 's/.*load/load/'); up to ${t}s: redr reproduce scale $*"
         timeout --signal=INT --kill-after=60 $t python -m redr reproduce scale "$@" $COMMON; echo "=== exit $? at $(date -u +%H:%M:%S) $(uptime | sed 's/.*load/load/')"; }
git log --oneline -1
step $CUT1M --widths 1048576 --algorithms gradient-global
step $END --algorithms dense-neuron
step $END --widths 4096,16384,65536 --algorithms random,gradient-global
step $END --widths 262144 --algorithms gradient-global
step $END --widths 262144 --algorithms random
echo "=== done $(date -u +%H:%M:%S) $(uptime)"
