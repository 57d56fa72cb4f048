#!/usr/bin/env bash
# Behaviour fingerprint: a short synthetic training run on NumPy with a fixed seed, and the
# sha256 of its metrics.jsonl with the time fields (images_per_s) removed. A refactor that
# claims "no change in behaviour" shows the same hash before and after.
#   bash benchmarks/fingerprint.sh [OUT_DIR]
set -euo pipefail
out=${1:-$(mktemp -d)}
rm -rf "$out"
python -m minunet.train --data synthetic --image-size 64 --base-channels 16 --depth 3 \
    --train-size 96 --val-size 32 --epochs 2 --batch-size 8 --seed 7 --dropout 0.1 \
    --out "$out" > "$out.log" 2>&1 || { cat "$out.log"; exit 1; }
pets=${MINUNET_PETS_SAMPLE:-}
files=("$out/metrics.jsonl")
if [ -n "$pets" ]; then  # the real-data path too: Pets sample, resized, 30 steps
    python -m minunet.train --data pets --data-dir "$pets" --no-download --image-size 64 \
        --base-channels 8 --depth 3 --epochs 1 --batch-size 8 --seed 7 \
        --out "$out/pets" > "$out.pets.log" 2>&1 || { cat "$out.pets.log"; exit 1; }
    files+=("$out/pets/metrics.jsonl")
fi
python - "${files[@]}" <<'PY'
import hashlib, json, sys
lines = [json.loads(line) for path in sys.argv[1:] for line in open(path)]
for line in lines:
    line.pop("images_per_s", None)
text = "\n".join(json.dumps(line, sort_keys=True) for line in lines)
print(text)
print("sha256", hashlib.sha256(text.encode()).hexdigest())
PY
