"""``python -m vostool.train ...`` (and ``torchrun -m vostool.train ...``): ``vostool train``."""

from vostool.cli.train import main

main()
