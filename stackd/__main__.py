"""``python -m stackd``: the same as the ``stackd`` command."""

import sys

from stackd.cli import main

sys.exit(main())
