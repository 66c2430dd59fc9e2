"""``python3 -m priorreg ...``: the same as the ``priorreg`` command."""
import sys

from .cli import main

sys.exit(main())
