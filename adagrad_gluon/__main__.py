"""``python -m adagrad_gluon``: the ``adagrad-gluon`` console script."""

from .cli import main

raise SystemExit(main())
