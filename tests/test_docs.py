"""The performance page and the README quote measured numbers: no cell may be left as the
placeholder that marks a number still to be measured."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["README.md", "docs/performance.md"])
def test_no_number_left_to_measure(path):
    text = (ROOT / path).read_text()
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if "MEASURE" in line]
    assert not lines, f"{path}: placeholders still to be measured on lines {lines}"
