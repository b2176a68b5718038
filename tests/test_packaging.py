"""The package declares what it needs without locking users out of new releases."""
import re

import pytest

from tests.helpers import PROJECT

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later


def test_dependencies_have_lower_bounds_and_no_caps():
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [item for group in project["optional-dependencies"].values()
                                              for item in group]
    capped = [item for item in requirements if re.search(r"<|~=|==", item)]
    assert capped == [], "a cap needs a known incompatibility, commented beside it"
    assert all(">=" in item for item in requirements)
