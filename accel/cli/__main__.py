"""``python -m accel.cli``: the ``diffusion-fast`` command."""

import sys

from . import main

sys.exit(main())
