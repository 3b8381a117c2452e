"""``python -m npvit <command>``: the same as the ``npvit`` command (npvit/cli/)."""
import sys

from .cli import entry

sys.exit(entry())
