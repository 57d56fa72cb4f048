"""``python -m minunet.export``: the command. Its code is in ``minunet.io.export``."""

import sys

from minunet.io.export import main

if __name__ == "__main__":
    sys.exit(main())
