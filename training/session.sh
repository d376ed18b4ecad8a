#!/bin/bash
# One work session's training, in the background: each stage resumes its run (or starts it, warm-started
# as its config says) and gets SIGTERM after its minutes, which saves a checkpoint and exits.
#   nohup training/session.sh x2:60 x3:35 x4:35 > runs/session.log 2>&1 &   (with the venv active: it runs `esrt`)
# Stop it early with: kill -TERM $(cat runs/session.pid) (the current stage saves first).
cd "$(dirname "$0")/.." || exit 1
mkdir -p runs
echo $$ > runs/session.pid
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
