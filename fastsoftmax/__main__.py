"""``python -m fastsoftmax``: the command line (``bench``, ``info``)."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
