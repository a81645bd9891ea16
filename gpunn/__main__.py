"""``python -m gpunn ...`` is the ``gpunn`` command."""

import sys

from .cli import main

sys.exit(main())
