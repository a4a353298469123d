"""``python -m minimal_icl COMMAND ...``: see :mod:`minimal_icl.cli`."""

from .cli import main

raise SystemExit(main())
