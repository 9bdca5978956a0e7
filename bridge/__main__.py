"""``python -m bridge``: the same command line as ``agent-supervisor``."""

from bridge.cli import main

raise SystemExit(main())
