"""``python -m trio_agent ...`` is the same as the ``trio-agent`` command."""

from trio_agent.cli.main import main

raise SystemExit(main())
