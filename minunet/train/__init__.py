"""Training: ``python -m minunet.train`` on the command line, ``train(TrainConfig(...))`` in code."""

from minunet.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
