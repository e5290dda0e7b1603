"""`python -m progressive` runs the command line (also under `accelerate launch -m`)."""

from progressive.cli.main import main

main()
