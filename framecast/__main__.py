"""`python -m framecast ...` is the `framecast` command."""
from framecast.launch.cli import main

raise SystemExit(main())
