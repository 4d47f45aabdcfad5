"""The former command line, kept for existing Jobs (``python -m
store_service.adapters.postgres.migrate [URL]``): it forwards to the one command,
``python -m store_service.migrate``, which imports this package (never the reverse)."""

from __future__ import annotations

import sys

from store_service.migrate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
