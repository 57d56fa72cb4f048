#!/usr/bin/env bash
# The README's Pets-sample command with minunet's DEFAULTS, three seeds, each scored by the
# independent scorer (benchmarks/pets_score.py: every test image resized to the training
# size, logits upsampled bilinearly to native, one confusion matrix over the first 120 test
# images). Prints one row per seed and checkpoint, then the mean and spread.
#
#   MINUNET_PETS_SAMPLE=DIR bash benchmarks/pets_defaults.sh [OUT_DIR] [extra train flags...]
#   SEEDS="0 1 2" EPOCHS=15 ... (the defaults)
#
# Extra flags go to every training run unchanged, so the same script measures a proposed
# change before it becomes a default (e.g. `--class-weights 1,1,2`). Both checkpoints a
# run leaves are scored: last.npz (the model after the last epoch) and best.npz (the
# epoch with the best mean IoU on the held-out images), when there is one. A seed whose
# run folder already holds score_last.json is not run again: rerunning the command after an
# interruption finishes the missing seeds, and seeds run side by side (SEEDS=0, SEEDS=1,
# ... into one OUT_DIR) are tabulated together by one more call with all of them.
#
# The PyTorch reference on the same protocol (plain U-Net, base 16, 128 px, Adam 1e-3,
# batch 8, flips, 15 epochs on all 356 trainval images): test mIoU 0.563.
set -euo pipefail
DATA=${MINUNET_PETS_SAMPLE:-}
if [[ -z "$DATA" || ! -d "$DATA/images" ]]; then
    echo "set MINUNET_PETS_SAMPLE to the Pets sample (the folder holding images/ and annotations/)" >&2
    exit 2
fi
OUT=${1:-runs/pets-defaults}
shift $(( $# > 0 ? 1 : 0 ))
SEEDS=${SEEDS:-0 1 2}
EPOCHS=${EPOCHS:-15}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for seed in $SEEDS; do
    run="$OUT/seed$seed"
    [[ -f "$run/score_last.json" ]] && continue
    "$PY" -m minunet.train --data pets --data-dir "$DATA" --no-download --image-size 128 \
        --base-channels 16 --depth 4 --batch-size 8 --epochs "$EPOCHS" --seed "$seed" \
        --out "$run" --no-progress "$@"
    for ckpt in last best; do
        if [[ -f "$run/$ckpt.npz" ]]; then
            "$PY" "$HERE/pets_score.py" --checkpoint "$run/$ckpt.npz" --data-dir "$DATA" \
                > "$run/score_$ckpt.json"
        fi
    done
done

"$PY" - "$OUT" $SEEDS <<'EOF'
import json, sys
from pathlib import Path
import numpy as np

out, seeds = Path(sys.argv[1]), sys.argv[2:]
print(f"{'seed':>4} {'ckpt':>4}  {'mIoU':>6} {'pixacc':>6}  {'pet':>6} {'backg':>6} {'outline':>7}")
for ckpt in ("last", "best"):
    rows = []
    for seed in seeds:
        path = out / f"seed{seed}" / f"score_{ckpt}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        iou = list(r["iou"].values())
        rows.append([r["miou"], r["pixel_accuracy"], *iou])
        print(f"{seed:>4} {ckpt:>4}  {r['miou']:6.4f} {r['pixel_accuracy']:6.4f}  "
              + " ".join(f"{v:6.4f}" for v in iou))
    if rows:
        a = np.array(rows)
        print(f"mean {ckpt:>4}  " + " ".join(f"{v:6.4f}" for v in a.mean(0)))
        print(f"min-max {ckpt}: mIoU {a[:, 0].min():.4f}-{a[:, 0].max():.4f}, "
              f"std {a[:, 0].std(ddof=1) if len(a) > 1 else 0.0:.4f}")
EOF
