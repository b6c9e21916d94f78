"""``python -m edgeflower.flwrctl``: see :mod:`edgeflower.flwrctl.cli`."""

import sys

from edgeflower.flwrctl.cli import main

sys.exit(main())
