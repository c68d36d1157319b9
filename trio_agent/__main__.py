"""``python -m trio_agent ...`` is the same as the ``trio-agent`` command."""

from .cli import main

raise SystemExit(main())
