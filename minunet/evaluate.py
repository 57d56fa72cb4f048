"""``python -m minunet.evaluate``: the command. Its code is in ``minunet.infer.evaluate``."""

import sys

from minunet.cli import run_cli
from minunet.infer.evaluate import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
