"""``python -m openradio.extract SOURCE... --version V --out DIR`` (the form torchrun runs:
``torchrun --nproc-per-node 8 -m openradio.extract ...``); the same flags as ``openradio extract``."""

import sys

from openradio.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
