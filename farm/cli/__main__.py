"""`python -m farm.cli`, the same as `farm` (and `python -m farm`)."""

import sys

from farm.cli import main

sys.exit(main())
