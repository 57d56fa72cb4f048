"""benchmarks/pets_epoch.py, smoke-run on a tiny generated Pets layout with --quick."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_pets_score import write_pets_layout

pytest.importorskip("torch", reason="the benchmark compares against PyTorch, not installed")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import pets_epoch  # noqa: E402

# 10 images, batch 4: 2 steps per epoch (the partial batch of 2 dropped).
TRAINVAL = {f"Bengal_{i}": (18 + i, 26 - i) for i in range(10)}
TINY = ["--size", "16", "--base", "2", "--depth", "2", "--batch", "4", "--quick"]


@pytest.fixture
def pets_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINUNET_DATA", str(tmp_path / "cache"))  # no cache outside tmp_path
    root = tmp_path / "pets"
    write_pets_layout(root, "trainval", TRAINVAL, seed=5)
    return root


def test_quick_run_times_every_contender_on_the_same_batches(pets_root, capsys):
    result = pets_epoch.main(["--data-dir", str(pets_root), *TINY])
    out = capsys.readouterr().out
    assert result["steps_per_epoch"] == 2
    names = ["minunet", "torch", "torch channels-last"]
    assert list(result["seconds_per_epoch"]) == names
    assert all(s > 0 for s in result["seconds_per_epoch"].values())
    # The same initial weights on the same first batch: the same loss. float32 through a
    # depth-2 net on both sides, summed in different orders: the float32 parity tolerance
    # of tests/test_cupy_parity.py.
    first = result["first_loss"]
    assert first["torch"] == pytest.approx(first["minunet"], rel=1e-4)
    assert first["torch channels-last"] == pytest.approx(first["minunet"], rel=1e-4)
    # --quick: 2 rounds of (warm-up + 1 timed step) per side, 4 steps: across the epoch end.
    assert "# steps taken per side: 4" in out
    for line in ("contender", "load average", "threads each side", "s/epoch"):
        assert line in out
    for name in names:
        assert any(row.startswith(name) for row in out.splitlines())


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MINUNET_PETS_SAMPLE", raising=False)
    with pytest.raises(SystemExit, match="pass --data-dir DIR or set MINUNET_PETS_SAMPLE"):
        pets_epoch.main(TINY)
    monkeypatch.setenv("MINUNET_PETS_SAMPLE", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="not an Oxford-IIIT Pets folder") as exit_info:
        pets_epoch.main(TINY)
    assert "\n" not in str(exit_info.value)


def test_a_size_the_net_cannot_take_is_one_line(pets_root):
    with pytest.raises(SystemExit, match="does not fit") as exit_info:
        pets_epoch.main(["--data-dir", str(pets_root), *TINY, "--size", "18"])
    assert "\n" not in str(exit_info.value)


def test_minunet_steps_with_the_training_loops_fast_optimiser_and_loss(pets_root, monkeypatch):
    """The training loop accelerates its optimiser and loss (minunet.train.loop); the
    benchmark's minunet side must time those, not the reference Adam."""
    from minunet.accel import IMPLEMENTATIONS

    accelerated = []
    real = pets_epoch.accelerate

    def spy(obj):
        accelerated.append(real(obj))
        return accelerated[-1]

    monkeypatch.setattr(pets_epoch, "accelerate", spy)
    pets_epoch.main(["--data-dir", str(pets_root), *TINY])
    names = sorted(type(obj).__name__ for obj in accelerated)
    fast = set(IMPLEMENTATIONS.values())
    assert len(accelerated) == 2 and all(type(obj) in fast for obj in accelerated), names
