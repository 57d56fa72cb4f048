"""The one hold-out rule: which samples of a pool are kept for validation.

Every source that has no official validation split (a folder's ``ROOT/images`` pool,
the 30 ISBI slices, the Pets trainval list, TFDS's train split) calls ``holdout``:

* ``val_fraction`` must be in [0, 1).
* ``val_fraction == 0``: no validation set; every sample trains.
* otherwise ``round(val_fraction * N)`` samples are held out, clamped to [1, N - 1]:
  at least one to validate on and at least one to train on. A pool of fewer than two
  samples cannot be split that way, which is an error (add data or pass 0).
* which samples: the first ones of ``np.random.default_rng(seed).permutation(N)``, so the
  same seed gives the same hold-out on every machine. Both parts keep the pool's order.
"""

from __future__ import annotations

import numpy as np

from minunet.errors import DataError


def holdout(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices 0..count-1 by the rule above.

    Returns ``(train, val)``: two sorted int64 index arrays, disjoint, together all of
    0..count-1.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(
            f"--val-fraction {val_fraction}: the share held out for validation must be at "
            "least 0 and below 1"
        )
    n_val = 0
    if val_fraction > 0:
        if count < 2:
            raise DataError(
                f"cannot hold out part of {count} sample{'s' * (count != 1)} for validation: "
                "add data, or pass --val-fraction 0 to train without validation"
            )
        n_val = min(max(1, round(count * val_fraction)), count - 1)
    order = np.random.default_rng(seed).permutation(count) if n_val else np.arange(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
