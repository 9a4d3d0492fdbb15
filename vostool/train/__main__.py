"""``python -m vostool.train ...`` (and ``torchrun -m vostool.train ...``): ``vostool train``.

Only a shim: the command lives in :mod:`vostool.cli.train`, which imports this package
lazily (the dependency runs cli -> train, never the other way)."""

from vostool.cli.train import main

main()
