"""The spec page (protocol/README.md) and the code describe the same messages and fields."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dreampolish.protocol import PROTOCOL_VERSION
from dreampolish.protocol import messages as m

PAGE = (Path(m.__file__).parent / "README.md").read_text()
COMMON = {"msg_id", "re", "job_id", "seq"}


def sections() -> dict[str, str]:
    parts = re.split(r"^### `(\w+)`\s*$", PAGE, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def test_page_and_code_list_the_same_message_types():
    assert set(sections()) == set(m.MESSAGE_TYPES)


def test_every_body_field_is_documented_in_its_section():
    for name, text in sections().items():
        fields = {f.name for f in dataclasses.fields(m.MESSAGE_TYPES[name])} - COMMON
        missing = {f for f in fields if f"`{f}`" not in text}
        assert not missing, f"{name}: undocumented fields {missing}"


def test_page_states_the_current_version_and_has_a_changelog_entry_for_it():
    assert f"Protocol version **{PROTOCOL_VERSION}**" in PAGE
    assert re.search(rf"^- \*\*{re.escape(PROTOCOL_VERSION)}\*\*", PAGE, flags=re.M)


def test_job_states_are_documented():
    for state in m.JOB_STATES:
        assert f"`{state}`" in PAGE
