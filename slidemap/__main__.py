"""``python -m slidemap``: the CLI, as the ``slidemap`` command."""

import sys

from slidemap.cli import main

sys.exit(main())
