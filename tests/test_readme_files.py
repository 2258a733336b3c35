"""Every file the README's commands and pictures name is shipped, so its walkthroughs run as typed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_docs_path_in_the_readme_exists():
    named = set(re.findall(r"\bdocs/[\w./-]*[\w]", (ROOT / "README.md").read_text()))
    assert {"docs/image-to-image/photo.png", "docs/image-to-image/mask.png", "docs/image-to-image/old-photo.jpg",
            "docs/tune/cross"} <= named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"the README names files that are not shipped: {missing}"


def test_the_readme_puts_dream_on_the_path_before_calling_it_bare():
    text = (ROOT / "README.md").read_text()
    activate = text.index("source .venv/bin/activate")
    first_bare = re.search(r"^dream ", text, re.MULTILINE).start()
    assert activate < first_bare
