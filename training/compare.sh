#!/bin/bash
# A/B runs of recipe changes from one checkpoint: each arm resumes the run's newest checkpoint into its own
# folder runs/compare/<run>/<arm>, trains with the arm's extra `esrt train` settings, and is then scored on
# Set5, Set14 and BSD100 (exact mode, fp32). $START in an arm's settings is the checkpoint's iteration.
#   training/compare.sh x4 'step=--iterations $((START+1500))' \
#     'cosine=--iterations $((START+1500)) --decay cosine --decay-start $START --lr-final 1e-6'
#   python training/compare_table.py runs/compare/x4      # the results as a Markdown table
# Run from anywhere with the venv active; the scored sets are found through $ESRT_DATA or ./datasets.
set -e
cd "$(dirname "$0")/.."
run=$1; shift
mkdir -p "runs/compare/$run"
echo $$ > runs/compare.pid
START=$(python -c "import torch; print(torch.load('training/$run/checkpoint.pt', weights_only=True)['iteration'])")
scale=${run#x}
for arm in "$@"; do
  name=${arm%%=*}; settings=$(eval echo "${arm#*=}")
  out="runs/compare/$run/$name"
  if [ -f "$out/scores.json" ]; then echo "$name: done already"; continue; fi
  echo "$(date -u +%FT%TZ) $name from $START: $settings"
  # shellcheck disable=SC2086  # the settings are separate words
  esrt train --config "training/$run.toml" --resume "training/$run" --out-dir "$out" --no-progress $settings \
    > "$out.log" 2>&1 &
  echo $! > runs/trainer.pid; wait $!
  esrt eval --method esrt --scale "$scale" --sets Set5 Set14 BSD100 --weights "$out/last.safetensors" \
    --json "$out/scores.json" > /dev/null 2>&1
  echo "$(date -u +%FT%TZ) $name: $(cat "$out/scores.json" | tr -d '\n ')"
done
