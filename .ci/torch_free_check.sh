#!/usr/bin/env bash
# The torch-free install, proven: a fresh venv gets `pip install .` (no extras), then
# predicts with and serves a bundle that the full install trained and exported.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
export SIGHTWISE_TRACKING=0 SIGHTWISE_HOME="$work/home" PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. a tiny dataset and an exported bundle, made by the full (training) install
python - "$work/data" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for k, name in enumerate(("red", "green")):
    folder = Path(sys.argv[1]) / name
    folder.mkdir(parents=True)
    for i in range(12):
        px = np.clip(rng.normal(60, 20, (48, 48, 3)) + np.eye(3)[k] * 150, 0, 255)
        Image.fromarray(px.astype(np.uint8)).save(folder / f"{name}_{i:02d}.png")
PY
sightwise train "$work/data" --out "$work/run" --strategy linear-probe --img-size 64 --no-progress

# 2. a fresh venv with the base install only
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q .
"$work/venv/bin/python" - <<'PY'
import importlib.util as u
missing = [m for m in ("torch", "timm", "torchvision", "mlflow") if u.find_spec(m) is None]
assert missing == ["torch", "timm", "torchvision", "mlflow"], f"the base install brought {missing}"
PY
bin="$work/venv/bin"
"$bin/sightwise" --version
"$bin/sightwise" predict "$work/run/bundle" "$work/data/red/red_00.png" --json | tee "$work/pred.json"
"$bin/python" -c "import json,sys; p=json.load(open(sys.argv[1])); assert p[0]['predictions'][0]['label']=='red', p" "$work/pred.json"
"$bin/sightwise" explain "$work/run/bundle" "$work/data/green/green_00.png" --out "$work/cam.png"

# 3. serve from the base install and answer one request
port=$("$bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
"$bin/sightwise" serve --bundle "$work/run/bundle" --port "$port" &
server=$!
"$bin/python" - "$port" "$work/data/green/green_01.png" <<'PY'
import json, sys, time, urllib.request, uuid
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        if urllib.request.urlopen(base + "/readyz", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("the torch-free server did not become ready")
boundary = uuid.uuid4().hex
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"g.png\"\r\n"
        "Content-Type: image/png\r\n\r\n").encode() + open(sys.argv[2], "rb").read() + \
       f"\r\n--{boundary}--\r\n".encode()
req = urllib.request.Request(base + "/v1/predict", data=body, method="POST", headers={
    "Content-Type": f"multipart/form-data; boundary={boundary}"})
answer = json.load(urllib.request.urlopen(req, timeout=30))
assert answer["results"][0]["predictions"][0]["label"] == "green", answer
print("torch-free serve answered:", answer["results"][0]["predictions"][0])
PY
echo "torch-free install check passed"
