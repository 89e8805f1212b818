"""`python -m clearmark`: the same command line as `clearmark`."""

from clearmark.workers.cli import main

main()
