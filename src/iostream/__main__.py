"""``python -m iostream``: see :mod:`iostream.app.cli`."""

from __future__ import annotations

import sys

from iostream.app.cli import main

# The guard matters: multiprocessing's spawn start method re-imports the parent's
# main module (as ``__mp_main__``) in every child, which must not launch anything.
if __name__ == "__main__":
    sys.exit(main())
