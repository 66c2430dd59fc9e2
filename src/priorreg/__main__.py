"""``python3 -m priorreg ...``: the same as the ``priorreg`` command."""
from .cli import run

run()
