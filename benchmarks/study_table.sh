#!/usr/bin/env bash
# The study's table on its own protocol (course layout, study split) with the `study_cpu`
# preset: the three variants one after the other, then `attreid compare` beside the study's
# published numbers. Needs `make weights` (ImageNet MobileNetV2). An interrupted run resumes
# from its last.pt when the script is started again.
#
#   bash benchmarks/study_table.sh            # DATA=... OUT=... EPOCHS=... to change
set -euo pipefail
ATTREID=${ATTREID:-.venv/bin/attreid}
DATA=${DATA:-../shared/data/market1501-trento}
OUT=${OUT:-runs/study_cpu}
EXTRA=()
if [[ -n "${EPOCHS:-}" ]]; then EXTRA+=(--set "optim.epochs=$EPOCHS"); fi
for variant in ${VARIANTS:-resnet convhead attention}; do
  resume=()
  if [[ -f "$OUT/$variant/last.pt" ]]; then resume=(--resume); fi
  start=$(date +%s)
  "$ATTREID" train --config study_cpu --data "$DATA" --out "$OUT/$variant" \
    --set "model.name=$variant" "${EXTRA[@]}" "${resume[@]}"
  echo "$variant: $(( $(date +%s) - start )) s wall-clock" | tee -a "$OUT/wall_clock.txt"
done
"$ATTREID" compare "$OUT" --delta --markdown "$OUT/compare.md" --json "$OUT/compare.json"
