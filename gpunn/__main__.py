"""``python -m gpunn ...`` is the ``gpunn`` command."""

import sys

from .cli.main import main

sys.exit(main())
