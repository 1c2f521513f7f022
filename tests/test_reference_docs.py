"""docs/reference/{configuration,modelctl,metadata}.md are generated from the code they
describe; a committed page that differs from what the code gives now fails here."""

from __future__ import annotations

import dataclasses
import difflib

import pytest

from service.config import Settings
from service.reference_docs import REFERENCE_DIR, configuration, generate, metadata, stale
from service.store.metadata import METADATA_SCHEMA

PAGES = ("configuration.md", "modelctl.md", "metadata.md")


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return generate()


def test_the_generator_writes_the_three_pages(generated):
    assert sorted(generated) == sorted(PAGES)


@pytest.mark.parametrize("name", PAGES)
def test_committed_page_is_what_the_code_generates(name, generated):
    path = REFERENCE_DIR / name
    assert path.is_file(), f"docs/reference/{name} is missing: run `make docs` and commit it"
    committed = path.read_text(encoding="utf-8")
    if committed != generated[name]:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated[name].splitlines(keepends=True),
                    f"docs/reference/{name} (committed)",
                    f"docs/reference/{name} (from the code)",
                )
            )[:60]
        )
        pytest.fail(
            f"docs/reference/{name} differs from what the code generates: run `make docs` "
            f"and commit the result.\n{diff}"
        )


def test_stale_names_a_page_that_differs(tmp_path, generated):
    for name, text in generated.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert stale(tmp_path) == []
    (tmp_path / "metadata.md").write_text(generated["metadata.md"] + "edited by hand\n")
    (tmp_path / "modelctl.md").unlink()
    assert sorted(stale(tmp_path)) == ["metadata.md", "modelctl.md"]


def test_every_setting_has_a_section_with_its_environment_variable(generated):
    page = generated["configuration.md"]
    for field in dataclasses.fields(Settings):
        assert f"\n### `{field.name}`\n\n`MODEL_SERVICE_{field.name.upper()}` · " in page


def test_every_modelctl_command_has_a_section(generated):
    import click

    from service.cli import cli

    def paths(group: click.Group, prefix: str):
        for name, command in group.commands.items():
            yield f"{prefix} {name}"
            if isinstance(command, click.Group):
                yield from paths(command, f"{prefix} {name}")

    found = list(paths(cli, "modelctl"))
    assert "modelctl experiment start" in found
    for path in found:
        assert f"\n## `{path}`\n" in generated["modelctl.md"]


def test_a_setting_without_a_docstring_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        # -- serving ---------------------------------------------------------------
        port: int = 80
        """The port."""
        host: str = "localhost"

    with pytest.raises(ValueError, match="setting host has no description"):
        configuration.sections(Undocumented)


def test_sections_come_from_the_section_comments():
    titles = [section.title for section in configuration.sections()]
    assert titles[0] == "Serving"
    assert "Monitoring" in titles
    assert len(titles) == len(set(titles)), "a section split in two: fields out of order?"


def test_a_metadata_field_without_a_description_is_refused():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "Its name."}, "size": {}},
    }
    with pytest.raises(ValueError, match="metadata field size has no description"):
        metadata.tables(schema)


def test_metadata_tables_say_when_a_field_is_required():
    rows = {
        table.path: {row[0]: row[2] for row in table.rows}
        for table in metadata.tables(METADATA_SCHEMA)
    }
    assert rows[""]["`name`"] == "yes"
    assert rows[""]["`classes`"] == "when `task` is `classification`"
    assert rows["input.features[]"]["`categories`"] == "when `dtype` is `category`"
    assert rows["backends.onnx"]["`reason`"] == "when `available` is not `true`"
