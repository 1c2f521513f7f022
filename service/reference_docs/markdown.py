"""What the three generated pages share: the banner that says where a page comes from, and
escaping for table cells."""

from __future__ import annotations


def banner(source: str) -> str:
    """An HTML comment (unseen once rendered) for whoever opens the Markdown to edit it."""
    return (
        f"<!-- Generated from {source} by `make docs`: edit the code, not this page; "
        "tests/test_reference_docs.py fails when the two differ. -->"
    )


def cell(text: str) -> str:
    """Text that stays in one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    """Text as inline code, with enough backticks around it for any it holds."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def anchor(heading: str) -> str:
    """The fragment GitHub and MkDocs give a heading (lower case, dashes for spaces)."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")
