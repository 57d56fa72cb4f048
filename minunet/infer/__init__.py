"""Using a trained model: whole-image and overlap-tile prediction, ``predict`` and ``evaluate``."""
