"""`python -m autoq.cli`: the autoq command line."""

from . import main

main()
