"""Running the console entry point in process, as a user's shell runs it."""
from __future__ import annotations

import sys

from vlmprobe.cli import main


def cli(capsys, *args: str) -> tuple[int, str]:
    """Exit code and output (stdout + stderr, one line per message) of ``vlmprobe *args``; a
    traceback in the output fails the test."""
    argv, sys.argv = sys.argv, ["vlmprobe", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return code, text
