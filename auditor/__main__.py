"""`python -m auditor` runs the command line, as the `auditor` console script does."""

from .cli import main

main()
