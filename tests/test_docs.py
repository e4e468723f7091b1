"""The README and the design document point only at files the repository has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHLIKE = re.compile(r"`([A-Za-z_][\w./-]*/[\w./-]*\.(?:py|yaml|md|json|parquet|csv))`")
LINK = re.compile(r"\]\(([^)#]+)\)")


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md"])
def test_docs_reference_only_files_in_the_repository(doc):
    text = (ROOT / doc).read_text()
    assert "../shared" not in text, f"{doc} points outside the repository"
    base = (ROOT / doc).parent
    missing = [p for p in LINK.findall(text) if not p.startswith(("http://", "https://")) and not (base / p).exists()]
    for path in PATHLIKE.findall(text):
        if any(ch in path for ch in "<>*") or path.startswith(("runs/", "tmp/")) or "NAME" in path:
            continue  # outputs a command writes, or placeholders
        if not ((ROOT / path).exists() or (base / path).exists()):
            missing.append(path)
    assert not missing, f"{doc} names files the repository does not have: {missing}"
