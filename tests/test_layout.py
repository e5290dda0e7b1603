"""The package layers: the library never imports the dataset tool's package."""

import ast
from pathlib import Path

import progressive


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_progressive_does_not_import_datasets_prep():
    root = Path(progressive.__file__).parent
    offenders = {
        p.name: sorted(m for m in _imports(p) if m.split(".")[0] == "datasets_prep")
        for p in root.glob("*.py")
    }
    assert len(offenders) > 10  # the package's modules were found
    assert {k: v for k, v in offenders.items() if v} == {}
