#!/bin/bash
# A short burst of training on a CUDA machine: resumes the x4, x3 and x2 runs in turn for a few minutes each
# (bf16 autocast, batch 64, lr scaled by sqrt(4) = 2 for the 4x larger batch) and writes the new resumable
# checkpoints and logs to one folder, to be scored on any machine before anything is shipped.
#   python training/pack_burst_data.py training/burst_data     # once, where the data is: lossless WebP
#   bash training/gpu_burst.sh OUT x4:5 x3:3 x2:2             # on the CUDA machine, from the repository root
# Environment: ESRT_BURST_DATA (default training/burst_data), ESRT_BURST_BATCH (64), ESRT_BURST_SECONDS_PER_MIN (60;
# a few seconds to try the script end to end on a CPU), ESRT_BURST_ARGS (more `esrt train` options, e.g.
# "--no-compile --patch 8" for that try).
# Afterwards: `python training/ship.py S --weights OUT/xS/last.safetensors` scores (and ships, if better) what came
# back, and OUT/xS/checkpoint.pt replaces training/xS/checkpoint.pt so that training goes on from there.
set -u
out=${1:?usage: gpu_burst.sh OUT RUN:MINUTES...}; shift
cd "$(dirname "$0")/.." || exit 1
data=${ESRT_BURST_DATA:-training/burst_data}
batch=${ESRT_BURST_BATCH:-64}
per_min=${ESRT_BURST_SECONDS_PER_MIN:-60}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/burst.log"
for stage in "$@"; do
  run=${stage%%:*}; minutes=${stage##*:}
  base=$(sed -n 's/^lr = \([0-9.e-]*\).*/\1/p' "training/$run.toml")
  lr=$(python -c "print($base * ($batch / 16) ** 0.5)")
  echo "$(date -u +%FT%TZ) $run for $minutes min, batch $batch, lr $lr" | tee -a "$out/burst.log"
  python -m esrt.cli train --config "training/$run.toml" --resume "training/$run" --out-dir "$out/$run" \
    --data "$data"/T91/HR "$data"/BSD200/HR "$data"/BSDS500_test200/HR --val-dir "$data/Set5" \
    --cache-dir "$out/cache" --batch "$batch" --lr "$lr" --precision auto --workers 4 --save-minutes 2 \
    --no-progress ${ESRT_BURST_ARGS:-} >> "$out/$run.log" 2>&1 &
  child=$!
  end=$((SECONDS + per_min * minutes))
  while kill -0 "$child" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 2; done
  kill -TERM "$child" 2>/dev/null; wait "$child"; status=$?
  echo "$(date -u +%FT%TZ) end $run (exit $status): $(tail -1 "$out/$run/log.csv" 2>/dev/null)" | tee -a "$out/burst.log"
  rm -rf "$out/$run/tensorboard" "$out/$run/best.safetensors" "$out/$run/checkpoint.prev.pt"
done
rm -rf "$out/cache"
