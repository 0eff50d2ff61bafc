"""``python -m consumer.devkit.bench.profiled OUT ARGS..``: the service under cProfile.

``python -m cProfile -m consumer`` would do, but it swallows the service's exit code (a
failed run would look clean); this keeps it and writes the stats to ``OUT`` either way.
"""

from __future__ import annotations

import cProfile
import sys

from consumer.cli import main as service_main


def main(argv: list[str]) -> int:
    """Run the service's command line ``argv[1:]``; profile stats go to ``argv[0]``."""
    out, args = argv[0], argv[1:]
    profile = cProfile.Profile()
    try:
        code: int = profile.runcall(service_main, args)
    finally:
        profile.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
