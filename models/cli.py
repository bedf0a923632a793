"""``python -m models [--variant V ...] --dest DIR | --list``; errors are caught here, once, and become exit codes.

Exit status: 0 done; 20-26 a ModelsError family (see errors.py: 21 config, 22 access/token, 23 not found,
24 integrity, 25 disk space, 26 network); 130 interrupted (partial files are kept and resumed next time).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from . import log
from .errors import ModelsError


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from . import download, listing, options

        opts = options.resolve(args, os.environ if env is None else env)
        if opts.list_only:
            print(listing.show(opts))
            return 0
        if opts.token_source:
            log.info(f"using the Hugging Face token from {opts.token_source}")
        download.run(opts)
        return 0
    except ModelsError as e:
        log.info("error: " + e.render())
        return e.exit_code
    except KeyboardInterrupt:
        log.info("interrupted; partial downloads are kept and resume on the next run")
        return 130
