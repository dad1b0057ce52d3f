"""``python -m vlmprobe`` (and ``torchrun -m vlmprobe``) run the command line."""
from .cli import main

main()
