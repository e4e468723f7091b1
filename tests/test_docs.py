"""The README and the docs/ pages point only at files the repository has; the README opens with the
two commands and indexes every docs page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHLIKE = re.compile(r"`([A-Za-z_][\w./-]*/[\w./-]*\.(?:py|yaml|md|json|parquet|csv))`")
LINK = re.compile(r"\]\(([^)#]+)\)")
DOCS = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
# files of other projects a page names on purpose (the vLLM and SGLang scripts whose output it converts)
OTHER_PROJECTS = {"docs/tuning-tables.md": {"benchmarks/kernels/benchmark_moe.py",
                                            "benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py"}}


@pytest.mark.parametrize("doc", DOCS)
def test_docs_reference_only_files_in_the_repository(doc):
    text = (ROOT / doc).read_text()
    assert "../shared" not in text, f"{doc} points outside the repository"
    base = (ROOT / doc).parent
    missing = [p for p in LINK.findall(text) if not p.startswith(("http://", "https://")) and not (base / p).exists()]
    for path in PATHLIKE.findall(text):
        if any(ch in path for ch in "<>*") or path.startswith(("runs/", "tmp/")) or "NAME" in path \
                or path in OTHER_PROJECTS.get(doc, ()):
            continue  # outputs a command writes, placeholders, or another project's files
        if not ((ROOT / path).exists() or (base / path).exists()):
            missing.append(path)
    assert not missing, f"{doc} names files the repository does not have: {missing}"


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "# moesim"
    assert lines[2] == "```bash" and lines[5] == "```"
    install, tests = lines[3], lines[4]
    assert install.endswith("pip install -e . && moesim simulate examples/mixtral-decode-8xh100.yaml")
    assert tests.endswith('pip install -e ".[test,calibrate]" && python -m pytest -q')


def test_readme_indexes_every_docs_page():
    text = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", text))
    pages = {doc for doc in DOCS if doc.startswith("docs/")}
    assert pages <= linked, f"README does not link {sorted(pages - linked)}"


def test_readme_anchors_exist():
    """In-page links (#...) of the README land on one of its headings (GitHub's anchor rule)."""
    text = (ROOT / "README.md").read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    wanted = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert wanted <= anchors, f"README links to missing headings: {sorted(wanted - anchors)}"
