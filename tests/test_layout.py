"""The package's layers: each sub-package imports only those below it, and the library never
imports the dataset tool's package."""

import ast
from pathlib import Path

import progressive

# Lowest first: a module may import its own sub-package and any sub-package before it.
LAYERS = ["core", "config", "data", "model", "run", "metrics", "train", "use", "cli"]
ROOT = Path(progressive.__file__).parent
# Optional packages (pyproject's extras, trackers) that a function may import where it needs one.
OPTIONAL = ("tensorboard", "wandb", "cv2")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def test_every_module_sits_in_a_layer():
    modules = _modules()
    assert len(modules) > 40  # the package's modules were found
    assert sorted({p.parent.name for p in modules}) == sorted(LAYERS)
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["__init__.py", "__main__.py"]


def test_layers_import_only_downwards():
    upward = {}
    for path in _modules():
        own = LAYERS.index(path.parent.name)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "progressive" and len(parts) > 1 and parts[1] in LAYERS:
                if LAYERS.index(parts[1]) > own:
                    upward.setdefault(f"{path.parent.name}/{path.name}", []).append(name)
    assert upward == {}


def test_progressive_does_not_import_datasets_prep():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.startswith("datasets_prep"))
        for p in ROOT.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_is_too_long():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {name: n for name, n in lengths.items() if n > 400} == {}


def _function_imports(path: Path) -> list[str]:
    """'line: module' for each import inside a function of the module at `path`."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_imports_sit_at_the_top_of_modules():
    repo = ROOT.parent
    folders = ("progressive", "datasets_prep", "tools")
    modules = [p for d in folders for p in (repo / d).rglob("*.py")]
    assert len(modules) > 50
    inside = {}
    for path in modules:
        for found in _function_imports(path):
            if found.split(": ")[1].split(".")[0] not in OPTIONAL:
                inside.setdefault(str(path.relative_to(repo)), []).append(found)
    assert inside == {}


def test_function_imports_are_found(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\n\nclass C:\n    def f(self):\n        import json\n"
                      "        from .x import y\n\n\ndef g():\n    import wandb\n")
    assert _function_imports(module) == ["6: json", "7: .x", "11: wandb"]


def test_no_script_edits_the_import_path():
    repo = ROOT.parent
    folders = ("bench", "tools", "datasets_prep", "progressive")
    scripts = [p for d in folders for p in (repo / d).rglob("*.py")]
    assert len(scripts) > 20
    assert [str(p.relative_to(repo)) for p in scripts if "sys.path.insert" in p.read_text()] == []
