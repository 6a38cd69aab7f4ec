"""
Every public function of an execution module or runner is one a user may call: Salt lists it
in ``sys.doc`` / ``runners.doc``, so it says what it does and shows how to call it, in a
``CLI Example:`` block that names it as the CLI does (``<virtualname>.<function>``). Plumbing
the formula calls between its own parts is private (a leading underscore) or lives in
``_utils/``.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "_modules").glob("*.py")) + sorted((REPO / "_runners").glob("*.py"))


def _virtualname(tree, path):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__virtualname__" for t in node.targets):
            return node.value.value
    return path.stem


def undocumented(path):
    """``<virtualname>.<function>`` of each public function of ``path`` whose docstring has no
    ``CLI Example:`` naming it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _virtualname(tree, path)
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            example = doc.partition("CLI Example:")[2]
            if f"{name}.{node.name}" not in example:
                out.append(f"{name}.{node.name}")
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_public_function_has_a_cli_example_naming_it(path):
    assert undocumented(path) == []


def test_a_public_function_without_its_cli_example_is_found(tmp_path):
    module = tmp_path / "kcm_x.py"
    module.write_text(
        '__virtualname__ = "kcm_x"\n\n'
        'def told():\n    """Told.\n\n    CLI Example:\n\n        salt \'*\' kcm_x.told\n    """\n\n'
        'def untold():\n    """Says what, not how."""\n\n'
        'def other():\n    """CLI Example:\n\n        salt \'*\' kcm_x.told\n    """\n\n'
        "def _private():\n    pass\n"
    )
    assert undocumented(module) == ["kcm_x.untold", "kcm_x.other"]
