"""``python -m minunet.predict``: the command. Its code is in ``minunet.infer.predict``."""

import sys

from minunet.cli import run_cli
from minunet.infer.predict import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
