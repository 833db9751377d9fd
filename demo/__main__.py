"""``python -m kpvid.demo``: the same as ``kpvid-demo``."""

from kpvid.demo import main

raise SystemExit(main())
