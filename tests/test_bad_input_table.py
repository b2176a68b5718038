"""docs/design.md's table of bad input names, for every case, the test that covers it: those tests exist."""
import re

from tests.helpers import PROJECT

DESIGN = PROJECT / "docs" / "design.md"


def named_tests() -> list[tuple[str, str]]:
    """(test file, test function) for every test the bad-input table names; `::name` continues the last file."""
    table = DESIGN.read_text().split("## Bad input")[1].split("\n## ")[0]
    named, current_file = [], None
    for row in (line for line in table.splitlines() if line.startswith("| ") and "test" in line.split("|")[-2]):
        for reference in re.findall(r"`([\w.]*)::(\w+)(?:\[[^\]]*\])?`", row.split("|")[-2]):
            current_file = reference[0] or current_file
            named.append((current_file, reference[1]))
    return named


def test_every_test_the_bad_input_table_names_exists():
    named = named_tests()
    assert len(named) >= 20
    missing = [f"{file}::{name}" for file, name in named
               if not re.search(rf"^def {name}\(", (PROJECT / "tests" / file).read_text(), re.MULTILINE)]
    assert missing == []
