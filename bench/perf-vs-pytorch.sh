#!/usr/bin/env bash
# Measure ditto and the PyTorch peer (shared/peers/python, after its setup.sh and
# prepare.sh) on the same shapes, one after the other, as JSON lines in $OUT.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$HERE/../shared/peers/python}
PY=~/.cache/ditto-peer/venv/bin/python
MODEL=~/.cache/ditto-peer/work/smollm2-135m-instruct-hf
cd "$PEERS"
out=${OUT:-/tmp/perf-vs-pytorch.jsonl}
: > $out
export OMP_WAIT_POLICY=passive
$PY calibrate.py 2 2>/dev/null | tail -1 | sed 's/^/{"who":"calibrate","r":/; s/$/}/' >> $out
$PY bench.py $MODEL forward --threads 2 2>/dev/null | tail -1 | sed 's/^/{"who":"torch","r":/; s/$/}/' >> $out
$PY bench.py $MODEL generate --batch 1 --steps 3 --threads 2 2>/dev/null | tail -1 | sed 's/^/{"who":"torch","r":/; s/$/}/' >> $out
$PY bench.py $MODEL generate --batch 16 --steps 3 --threads 2 2>/dev/null | tail -1 | sed 's/^/{"who":"torch","r":/; s/$/}/' >> $out
$PY bench.py $MODEL lora --threads 2 2>/dev/null | tail -1 | sed 's/^/{"who":"torch","r":/; s/$/}/' >> $out
"$HERE/target/release/ditto" perf --json --threads 2 --steps 5 --only forward 2>/dev/null | sed 's/^/{"who":"ditto","r":/; s/$/}/' >> $out
"$HERE/target/release/ditto" perf --json --threads 2 --steps 5 --only lora 2>/dev/null | sed 's/^/{"who":"ditto","r":/; s/$/}/' >> $out
"$HERE/target/release/ditto" perf --json --threads 2 --steps 3 --only generate1,generate16 2>/dev/null | sed 's/^/{"who":"ditto","r":/; s/$/}/' >> $out
