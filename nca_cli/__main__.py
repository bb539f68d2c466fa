"""``python -m nca_cli`` is the ``nca`` command."""

from nca_cli.cli import main

main()
