#!/usr/bin/env bash
# The GPU measurements of docs/RESULTS.md, part 3 (one lent GPU; see DEVELOPERS.md and
# ../shared/tools/README.md). Pack first:  bash ../shared/tools/device-bundle.sh deepsort lite0
# then on the device (carry .device), one stage a command (each under 10 minutes):
#   bash dev/gpu_issue18.sh throughput   # engine vs bare step, 128x64 cpu preset and 256x128 gpu
#   bash dev/gpu_issue18.sh train        # the gpu preset, 5-minute budget, on Market-1501 train
#   bash dev/gpu_issue18.sh train --set model.backbone=efficientnet_lite0 --set model.weights=lite0
# Results go to $OUT (benchmark tables, metrics.jsonl, config.yaml, the model-only checkpoint
# best_model.pt for the full-test evaluation on the CPU machine). Try it on a CPU first with
#   TINY=1 OUT=/tmp/out bash dev/gpu_issue18.sh throughput|train
set -euo pipefail
stage=${1:?usage: gpu_issue18.sh throughput|train [--set KEY=VALUE ...]}; shift
OUT=${OUT:?set OUT to the folder for the results}
if [ -f .device/env.sh ]; then source .device/env.sh; fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}
py=${PYTHON:-python3}
if [ "${TINY:-0}" = 1 ]; then
  device=cpu; size=(--height 64 --width 32 --p 4 --k 2 --steps 3 --warmup 1 --repeats 1)
  big=("${size[@]}"); write=(); tiny_train=()
  for kv in data.height=64 data.width=32 data.p=4 data.k=2 data.batches_per_epoch=3 \
    optim.epochs=2 train.time_budget_min=0 model.weights=random train.eval_every=1; do
    tiny_train+=(--set "$kv"); done
else
  device=cuda; size=(--height 128 --width 64 --p 16 --k 4 --steps 100 --warmup 20 --repeats 3)
  big=(--height 256 --width 128 --p 16 --k 4 --steps 100 --warmup 20 --repeats 3); tiny_train=()
  write=(--write)
fi
case $stage in
  throughput)
    cp benchmarks/RESULTS.md "$OUT/RESULTS.before.md" 2>/dev/null || true
    for amp in bf16 none; do
      $py benchmarks/train_throughput.py --engine --device $device --preset cpu "${size[@]}" \
        --amp $amp --compile none reduce-overhead "${write[@]}" | tee "$OUT/throughput_128x64_$amp.txt"
    done
    $py benchmarks/train_throughput.py --engine --device $device --preset gpu "${big[@]}" \
      --amp bf16 --compile none reduce-overhead "${write[@]}" | tee "$OUT/throughput_256x128.txt"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md" ;;
  train)
    data=${ATTREID_DATA:?no dataset: source .device/env.sh or set ATTREID_DATA}
    run=runs/gpu_issue18
    rm -rf "$run"
    time $py -m attreid.cli train --config gpu --data "$data" --out "$run" \
      "${tiny_train[@]}" "$@" 2>&1 | tee "$OUT/train.log"
    cp "$run/metrics.jsonl" "$run/config.yaml" "$OUT/"
    $py - "$run" "$OUT" <<'PY'
import hashlib, sys, torch
run, out = sys.argv[1], sys.argv[2]
state = torch.load(f"{run}/best.pt" if __import__("os").path.exists(f"{run}/best.pt")
                   else f"{run}/last.pt", map_location="cpu", weights_only=False)
keep = {k: v for k, v in state.items() if k not in ("optimizer", "criterion", "scaler")}
torch.save(keep, f"{out}/best_model.pt")
print("best_model.pt sha256", hashlib.sha256(open(f"{out}/best_model.pt", "rb").read()).hexdigest())
PY
    ;;
  *) echo "unknown stage $stage (throughput, train)"; exit 2 ;;
esac
