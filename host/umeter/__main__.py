"""`python -m umeter` is the `umeter` command."""

import sys

from umeter.cli import main

sys.exit(main())
