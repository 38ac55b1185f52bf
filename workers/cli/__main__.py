"""``python -m workers.cli``: the ``deepscan`` command."""

import sys

from workers.cli import main

if __name__ == "__main__":
    sys.exit(main())
