"""``python -m minunet.tune``: the command. Its code is in ``minunet.train.tune``."""

import sys

from minunet.cli import run_cli
from minunet.train.tune import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
