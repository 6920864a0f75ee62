#!/usr/bin/env bash
# Sweep of the cpu preset's preference stage (ditto.lr, ditto.beta) on the validation
# prompts of a few authors (`ditto bench --tune`: test texts stay unseen). One bench
# output folder per setting, methods zero-shot, sft and ditto, style judge; the SFT
# adapter (same SFT settings in every folder) is trained once, in the first folder, and
# copied into the others.
#
#   bench/tune.sh DATA AUTHORS OUT [extra ditto bench flags...]
#   bench/tune.sh ../shared/benchmarks/ccat50 0,1 tune/ccat50 --max-demo-words 120 ...
#
# Then each OUT/<setting>/report/results.json holds DITTO's head-to-head win rates
# against zero-shot and SFT and the validation NLL.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DITTO=${DITTO:-$HERE/target/release/ditto}
data=$1 authors=$2 out=$3
shift 3
settings=(
  "lr2e-4_beta0.1 --set ditto.lr=2e-4 --set ditto.beta=0.1"
  "lr5e-5_beta0.1 --set ditto.lr=5e-5 --set ditto.beta=0.1"
  "lr5e-4_beta0.1 --set ditto.lr=5e-4 --set ditto.beta=0.1"
  "lr2e-4_beta0.5 --set ditto.lr=2e-4 --set ditto.beta=0.5"
)
first=""
for s in "${settings[@]}"; do
  read -r name flags <<<"$s"
  dir=$out/$name
  if [[ -n $first ]]; then
    for a in ${authors//,/ }; do
      src=$first/authors/$a dst=$dir/authors/$a
      mkdir -p "$dst"
      for f in demos.jsonl sft sft-train.json sft-metrics.jsonl zero-shot.json sft.json; do
        [[ -e $dst/$f || ! -e $src/$f ]] || cp -r "$src/$f" "$dst/$f"
      done
    done
  fi
  # shellcheck disable=SC2086
  "$DITTO" bench --data "$data" --authors "$authors" --methods zero-shot,sft,ditto --tune \
    --out "$dir" "$@" $flags
  first=${first:-$dir}
done
