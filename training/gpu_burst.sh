#!/bin/bash
# A short burst of training on a CUDA machine: resumes the runs named, in turn, for a fixed time each, and writes
# the new resumable checkpoints and logs to one folder, to be scored on any machine before anything is shipped.
#   python training/pack_burst_data.py training/burst_data     # once, where the data is: lossless WebP
#   bash training/gpu_burst.sh OUT x2:500 x4:120               # on the CUDA machine: RUN:SECONDS, from the repo root
# Each run's time is spent in two phases, with bf16 autocast and the lr scaled by sqrt(batch / 16):
#   1. hold (the first ESRT_BURST_HOLD of the time, default 0.4): the run's own step schedule, so a constant lr once
#      its milestones are past; the it/s it reaches there sizes phase 2;
#   2. decay: a cosine decay to 1e-6 over the iterations that fit in the rest of the time, with ESRT_BURST_DECAY_ARGS
#      (default "--loss l2") added, so that the run ends annealed.
# A phase that fails within its first minute is tried once more without torch.compile and DataLoader workers.
# Environment: ESRT_BURST_DATA (default training/burst_data), ESRT_BURST_BATCH (64), ESRT_BURST_HOLD (0.4),
# ESRT_BURST_DECAY_ARGS ("--loss l2"), ESRT_BURST_ARGS (more `esrt train` options for both phases, e.g.
# "--no-compile --patch 8" to try the script end to end on a CPU).
# Afterwards: `python training/ship.py S --weights OUT/xS/last.safetensors` scores (and ships, if better) what came
# back, and OUT/xS/checkpoint.pt replaces training/xS/checkpoint.pt so that training goes on from there.
set -u
out=${1:?usage: gpu_burst.sh OUT RUN:SECONDS...}; shift
cd "$(dirname "$0")/.." || exit 1
data=${ESRT_BURST_DATA:-training/burst_data}
batch=${ESRT_BURST_BATCH:-64}
hold=${ESRT_BURST_HOLD:-0.4}
decay_args=${ESRT_BURST_DECAY_ARGS:---loss l2}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
cache=$(mktemp -d)
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/burst.log"
note() { echo "$(date -u +%FT%TZ) $*" | tee -a "$out/burst.log"; }

# train RUN UNTIL FROM ARGS...: one `esrt train` phase resumed from FROM into OUT/RUN, stopped (SIGTERM, which
# saves a checkpoint) at second UNTIL of the script if it has not finished by then; its exit status is returned.
train() {
  local run=$1 until=$2 from=$3; shift 3
  python -m esrt.cli train --config "training/$run.toml" --resume "$from" --out-dir "$out/$run" \
    --data "$data"/T91/HR "$data"/BSD200/HR "$data"/BSDS500_test200/HR "$data"/Photos31 --sampling area \
    --val-dir "$data/Set5" --cache-dir "$cache" --batch "$batch" --lr "$lr" --precision auto --workers 4 \
    --save-every 100000 --save-minutes 2 --no-progress "$@" >> "$out/$run.log" 2>&1 &
  local child=$!
  while kill -0 "$child" 2>/dev/null && [ $SECONDS -lt "$until" ]; do sleep 1; done
  kill -TERM "$child" 2>/dev/null; wait "$child"
}

# phase RUN UNTIL FROM ARGS...: train, and once more without compile and workers if it failed within a minute.
phase() {
  local began=$SECONDS status
  # shellcheck disable=SC2086  # ESRT_BURST_ARGS holds separate words
  train "$@" ${ESRT_BURST_ARGS:-}; status=$?
  if [ $status -ne 0 ] && [ $((SECONDS - began)) -lt 60 ]; then
    note "$1 failed (exit $status) after $((SECONDS - began)) s; again without compile and workers"
    # shellcheck disable=SC2086
    train "$@" ${ESRT_BURST_ARGS:-} --no-compile --workers 0; status=$?
  fi
  return $status
}

iteration() { python -c "import torch; print(torch.load('$1/checkpoint.pt', weights_only=True)['iteration'])"; }

for stage in "$@"; do
  run=${stage%%:*}; seconds=${stage##*:}; end=$((SECONDS + seconds))
  base=$(sed -n 's/^lr = \([0-9.e-]*\).*/\1/p' "training/$run.toml")
  lr=$(python -c "print($base * ($batch / 16) ** 0.5)")
  hold_end=$((SECONDS + $(python -c "print(int($seconds * $hold))")))
  note "$run for $seconds s, batch $batch, lr $lr: hold until +$((hold_end - SECONDS)) s"
  phase "$run" "$hold_end" "training/$run" --iterations 100000000  # stopped by time, never by count
  note "$run hold done (exit $?): $(tail -1 "$out/$run/log.csv" 2>/dev/null)"
  start=$(iteration "$out/$run") || { note "$run: no checkpoint after the hold"; continue; }
  # it/s of the hold's last rows; 45 s of the rest go to start-up (compile from its cache, data) and the end
  speed=$(python -c "import csv, statistics; r = list(csv.DictReader(open('$out/$run/log.csv')))[-8:]
print(statistics.median(float(x['it_per_s']) for x in r))")
  count=$(python -c "print(max(100, int($speed * max(0, $end - $SECONDS - 45) * 0.9)))")
  note "$run decay from $start over $count iterations (hold speed $speed it/s)"
  # shellcheck disable=SC2086  # the decay's settings are separate words
  phase "$run" "$end" "$out/$run" --iterations $((start + count)) --decay cosine --decay-start "$start" \
    --lr-final 1e-6 $decay_args
  note "end $run (exit $?): $(tail -1 "$out/$run/log.csv" 2>/dev/null)"
  rm -rf "$out/$run/tensorboard" "$out/$run/best.safetensors" "$out/$run/checkpoint.prev.pt"
done
rm -rf "$cache"
