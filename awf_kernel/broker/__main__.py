"""`python -m awf_kernel.broker [--config FILE] [--socket PATH]`, same as `awf-kernel broker`."""

import sys

from ..cli import main

sys.exit(main(["broker", *sys.argv[1:]]))
