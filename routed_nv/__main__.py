"""`python -m routed_nv`: the same as the `routed-nv` command."""

from routed_nv.cli import main

main()
