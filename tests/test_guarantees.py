"""The README's "Guarantees" table names, for each promise, tests that exist: a renamed or
deleted test cannot leave a promise standing unproved."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_guarantee_names_tests_that_exist():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| promise")]
    assert len(rows) >= 15
    for row in rows:
        proof = row.rsplit("|", 2)[1]
        file = None
        refs = re.findall(r"`([^`]+)`", proof)
        assert refs, row
        for ref in refs:
            path, _, name = ref.partition("::")
            if path:  # a bare "::name" is in the row's last named file
                file = next(ROOT.joinpath("tests").rglob(Path(path).name), None) \
                    if not (ROOT / path).is_file() else ROOT / path
            assert file is not None and file.is_file(), (ref, row)
            if name:
                assert re.search(rf"^def {re.escape(name)}\(", file.read_text(), re.M), (ref, row)
