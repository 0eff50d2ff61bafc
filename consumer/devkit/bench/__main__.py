"""``python -m consumer.devkit.bench``."""

import sys

from consumer.devkit.bench.cli import main

sys.exit(main())
