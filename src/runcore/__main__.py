"""``python -m runcore``: the same as the ``runcore`` command."""

from runcore.cli import main

raise SystemExit(main())
