"""`python -m sae_hooks ...` is the `sae-hooks` command."""

import sys

from sae_hooks.cli import main

if __name__ == "__main__":
    sys.exit(main())
