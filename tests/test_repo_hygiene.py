"""Repository hygiene: every citation in the tracked sources points at something a reader can open."""

import re
import subprocess

import pytest

from tests.conftest import ROOT

# Notes kept outside this repository ("references/latte.md §4.1", "metrics.md §2.6"): cite the paper and its
# section or the official code's file and function instead, or state the fact itself.
OUTSIDE_NOTES = re.compile(r"references/|\.md\s*§")


def tracked_files(*patterns: str) -> list[str]:
    """Tracked files matching git pathspecs, relative to the repository root (skip outside a git checkout)."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return [name for name in result.stdout.split("\0") if name and (ROOT / name).is_file()]


def test_no_tracked_file_outside_tests_cites_notes_that_are_not_in_the_repository():
    files = [name for name in tracked_files("*.py", "*.yaml", "*.md") if not name.startswith("tests/")]
    assert "README.md" in files and "conf/train.yaml" in files and "train.py" in files  # the listing is real
    citing = [
        f"{name}:{number}: {line.strip()}"
        for name in files
        for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE_NOTES.search(line)
    ]
    assert not citing, (
        "cite the paper or the official code instead of notes outside the repository:\n" + "\n".join(citing)
    )
