#!/bin/bash
# Builds the wheel, installs it with torch into a fresh venv outside the repository and upscales an image
# at x2, x3 and x4 with the shipped weights (no data sets, no source tree). Run from anywhere:
#   scripts/check_wheel.sh [WORKDIR]        # WORKDIR default /tmp/esrt-wheel-check (deleted first)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/esrt-wheel-check}"
rm -rf "$work" "$repo/dist"
python3 -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install -q build
"$work/build-venv/bin/python" -m build -q --wheel --outdir "$repo/dist" "$repo" > "$work/build.log" 2>&1
wheel=$(ls "$repo"/dist/esrt-*.whl)
python3 - "$wheel" <<'PY'
import sys, zipfile
names = sorted(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".safetensors"))
print(sys.argv[1], names)
assert names == [f"esrt/weights/esrt_x{s}.safetensors" for s in (2, 3, 4)], "the wheel must hold the three weight files"
PY
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" install -q "$wheel"
mkdir -p "$work/run" && cd "$work/run"
"$work/venv/bin/python" -c "import numpy as np; from PIL import Image; Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype('uint8')).save('photo.png')"
for s in 2 3 4; do "$work/venv/bin/esrt" upscale photo.png --scale $s -o out; done
"$work/venv/bin/python" -c "from PIL import Image; import os; [print(f, Image.open('out/' + f).size) for f in sorted(os.listdir('out'))]"
