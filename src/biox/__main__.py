"""``python -m biox``: the same as the ``biox`` command."""

from biox.cli import main

main()
