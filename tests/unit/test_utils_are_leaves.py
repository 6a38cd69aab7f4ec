"""
The formula's ``_utils`` are leaves (issue #26, item 3): Salt's loader packs no ``__utils__``
into a utils module, so a util that asks for another one fails on a real minion or master
while the unit tier, which imports utils as plain modules, would not notice. Every util is
read with ``ast``; the callers hand a util plain data or another util's function. And
``_utils/README.md`` names every util, and only those.
"""

import ast
import re

import pytest

from kcmlab.formula import REPO

UTILS = sorted((REPO / "_utils").glob("*.py"))
NAMES = {path.stem for path in UTILS}


def _imported(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [f"{node.module or ''}.{alias.name}" for alias in node.names]
    return []


def reaches(tree):
    """``(line, how)`` of every place the parsed util ``tree`` reaches another util."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and node.id == "__utils__"
            or isinstance(node, ast.Global)
            and "__utils__" in node.names
        ):
            found.append((node.lineno, "__utils__"))
        for name in _imported(node):
            if name.startswith(("salt.loader", "importlib")) or name.split(".")[0] in NAMES:
                found.append((node.lineno, f"imports {name}"))
        if isinstance(node, ast.Attribute) and node.attr == "loader":
            found.append((node.lineno, "salt.loader"))
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and str(node.slice.value).split(".")[0] in NAMES
        ):
            found.append((node.lineno, f"looks up {node.slice.value}"))
    return found


@pytest.mark.parametrize("path", UTILS, ids=lambda path: path.name)
def test_a_util_calls_no_other_util(path):
    found = reaches(ast.parse(path.read_text()))
    assert not found, "\n".join(f"_utils/{path.name}:{line}: {how}" for line, how in sorted(set(found)))


@pytest.mark.parametrize(
    "source",
    [
        'def f():\n    return __utils__["kcm_time.epoch"](1)\n',
        "import salt.loader\n",
        "def f(opts):\n    global __utils__\n",
        'def f(utils):\n    return utils["kcm_state_file.read_json"]\n',
        "from kcm_time import epoch\n",
    ],
)
def test_each_way_of_reaching_a_util_is_found(source):
    assert reaches(ast.parse(source))


def test_the_readme_names_every_util_once_and_nothing_else():
    readme = (REPO / "_utils" / "README.md").read_text()
    listed = re.findall(r"^- `(\w+)\.py`", readme, re.M)
    assert sorted(listed) == sorted(NAMES), "a util missing from _utils/README.md, or one that does not exist"
    assert len(listed) == len(set(listed))
    cited = re.findall(r"`([\w/]+\.py)`", readme)
    gone = [path for path in cited if not (REPO / path).exists() and not (REPO / "_utils" / path).exists()]
    assert not gone, f"_utils/README.md cites files that do not exist: {gone}"
