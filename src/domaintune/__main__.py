"""`python -m domaintune` is the same as the `domaintune` command."""

from domaintune.cli import main

raise SystemExit(main())
