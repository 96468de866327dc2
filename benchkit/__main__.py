"""``python -m benchkit`` is the same as the ``benchkit`` command."""

from benchkit.cli import main

main()
