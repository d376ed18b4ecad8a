#!/bin/bash
# Trains several runs in turn, each for a given number of minutes, in the background: each stage resumes
# its run from the newest checkpoint (or starts it, warm-started as its config says), and after its minutes
# gets SIGTERM, which saves a checkpoint and exits. Run from anywhere, with the venv active (it runs `esrt`):
#   nohup training/train_in_turn.sh x2:60 x3:35 x4:35 > runs/train_in_turn.log 2>&1 &
# Stop it early with: kill -TERM $(cat runs/train_in_turn.pid) (the current stage saves first).
cd "$(dirname "$0")/.." || exit 1
mkdir -p runs
echo $$ > runs/train_in_turn.pid
child=""
trap '[ -n "$child" ] && kill -TERM "$child" && wait "$child"; exit 143' TERM INT
for stage in "$@"; do
  run=${stage%%:*}; minutes=${stage##*:}
  echo "$(date -u +%FT%TZ) start $run for $minutes min"
  esrt train --config "training/$run.toml" --no-progress >> "runs/train_$run.log" 2>&1 &
  child=$!; echo $child > runs/trainer.pid
  end=$((SECONDS + 60 * minutes))
  while kill -0 "$child" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 10; done
  kill -TERM "$child" 2>/dev/null; wait "$child"
  echo "$(date -u +%FT%TZ) end $run: $(tail -1 "training/$run/log.csv")"
done
