"""``python -m openradio`` runs the CLI."""

import sys

from openradio.cli import main

sys.exit(main())
