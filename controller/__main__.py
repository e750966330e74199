"""``python -m controller`` is the ``canary`` command."""

from controller.cli import main

main()
