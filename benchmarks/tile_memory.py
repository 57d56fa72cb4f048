"""Peak memory of predicting one large image with ``python -m minunet.predict --tile``.

Writes a random 4096 x 4096 RGB image and a freshly initialised same-padding U-Net
checkpoint (base 32, depth 4: the default network; the weights do not change the memory),
then runs the predict command in a fresh child process per tile size, which reports its
own peak resident memory (ru_maxrss, from the operating system) when it ends.

    python benchmarks/tile_memory.py [--size 4096] [--tiles 256 512] [--base 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from minunet.io.checkpoint import save_checkpoint
from minunet.model import UNet

# Runs the predict command, then prints this process's own peak memory (KiB) on stderr.
CHILD = """
import resource, sys
from minunet.infer.predict import main
main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tiles", type=int, nargs="+", default=[256, 512])
    p.add_argument("--base", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (args.size, args.size, 3), np.uint8)
        Image.fromarray(image).save(tmp / "big.png")
        net = UNet(3, 3, base_channels=args.base, depth=4)
        save_checkpoint(tmp / "net.npz", net.state_dict(), {"model": net.config})
        print(
            f"image {args.size}x{args.size} RGB, U-Net base {args.base} depth 4, "
            f"{net.num_parameters():,} parameters"
        )
        for tile in args.tiles:
            argv = ["--checkpoint", str(tmp / "net.npz"), str(tmp / "big.png")]
            argv += ["--tile", str(tile), "--out", str(tmp / f"out{tile}")]
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-c", CHILD, *argv], check=True, capture_output=True, text=True
            )
            seconds = time.perf_counter() - t0
            peak_kib = int(r.stderr.strip().splitlines()[-1])  # ru_maxrss is KiB on Linux
            print(
                f"--tile {tile}: peak resident memory {peak_kib / 2**20:.2f} GiB, {seconds:.0f} s"
            )


if __name__ == "__main__":
    main()
