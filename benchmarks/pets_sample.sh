#!/usr/bin/env bash
# Real accuracy on the real Oxford-IIIT Pets sample (691 images and trimaps, downscaled, in
# the official layout; DATA_DIR, or the folder $MINUNET_PETS_SAMPLE names). Trains on its
# trainval list (356 images, 5% held out to pick best.npz), then scores the first 120 test
# images at their native resolution (the net on each image resized to 128 px, its logits
# resized back: evaluate's default) with the run's answer, last.npz.
#
#   bash benchmarks/pets_sample.sh [DATA_DIR] [OUT_DIR] [extra train flags...]
#
# The reference it is compared with (FACTS.md, PyTorch, same data and protocol): base 16,
# 128 px, Adam 1e-3, batch 8, flips, 15 epochs -> test mIoU 0.563, pixel accuracy 0.78.
set -euo pipefail
DATA=${1:-${MINUNET_PETS_SAMPLE:-}}
if [[ -z "$DATA" || ! -d "$DATA/images" ]]; then
    echo "give the Pets sample folder (holding images/ and annotations/) as DATA_DIR or MINUNET_PETS_SAMPLE" >&2
    exit 2
fi
OUT=${2:-runs/pets-sample}
shift $(( $# > 2 ? 2 : $# ))
python -m minunet.train --data pets --data-dir "$DATA" --no-download --image-size 128 \
    --base-channels 16 --depth 4 --epochs 15 --batch-size 8 --lr 1e-3 --optimizer adam \
    --out "$OUT" --no-progress "$@"
python -m minunet.evaluate --checkpoint "$OUT/last.npz" --data pets --data-dir "$DATA" \
    --limit 120 --out "$OUT/eval"
