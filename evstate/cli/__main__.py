"""``python -m evstate.cli``."""

from evstate.cli.app import main

main()
