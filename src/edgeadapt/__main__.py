"""``python -m edgeadapt ...`` (also ``accelerate launch -m edgeadapt ...``): the ``edgeadapt`` CLI."""

import sys

from edgeadapt.cli.main import main

sys.exit(main())
