"""``python -m minitx`` is the ``minitx`` command."""

import sys

from .cli import main

sys.exit(main())
