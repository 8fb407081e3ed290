"""Import direction inside ``lever_lm`` (issue 19): the toy world (``lever_lm/toy/``) is a leaf that may import the
library, and the library (every other lever_lm module) never imports the toy; no lever_lm module imports another
lever_lm module's private (single-underscore) names. Every import counts: those inside functions too, relative ones
resolved, and ``importlib.import_module("...")`` with a literal name."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY = "lever_lm.toy"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names imported from it) of every import in ``path`` (a module under ``root``):
    ``import a.b`` gives ("a.b", []), ``from a import b, c`` gives ("a", ["b", "c"])."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                target = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            found.append((node.lineno, target, [alias.name for alias in node.names]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, []))
    return sorted(found)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def toy_imports(root: Path) -> list[str]:
    """file:line of every import of lever_lm.toy (or a submodule) by a lever_lm module outside lever_lm/toy/."""
    offending = []
    for path in sorted((root / "lever_lm").rglob("*.py")):
        if within(module_name(path, root), TOY):
            continue
        for line, target, names in imports(path, root):
            # `from lever_lm import toy` names the toy as well
            if any(within(module, TOY) for module in [target, *(f"{target}.{n}" for n in names)]):
                offending.append(f"{path.relative_to(root)}:{line}: {target} {' '.join(names)}".rstrip())
    return offending


def private_imports(root: Path) -> list[str]:
    """file:line of every ``from X import _name`` (X another lever_lm module) and ``import lever_lm..._module``."""
    offending = []
    for path in sorted((root / "lever_lm").rglob("*.py")):
        importer = module_name(path, root)
        for line, target, names in imports(path, root):
            if not within(target, "lever_lm"):
                continue
            where = f"{path.relative_to(root)}:{line}"
            offending += [f"{where}: the private module {target}" for part in target.split(".") if is_private(part)]
            if target != importer:
                offending += [f"{where}: {name} from {target}" for name in names if is_private(name)]
    return offending


def test_the_library_never_imports_the_toy_world():
    offending = toy_imports(REPO)
    assert not offending, "the library imports lever_lm.toy (only lever_lm/toy/ may):\n" + "\n".join(offending)


def test_no_private_name_crosses_between_lever_lm_modules():
    offending = private_imports(REPO)
    assert not offending, "private names imported across lever_lm modules:\n" + "\n".join(offending)


def test_the_checks_see_offending_imports(tmp_path):
    """The probe itself: relative, function-local and importlib imports are resolved and caught; dunders and a
    module's imports from itself are not."""
    package = tmp_path / "lever_lm" / "lvlm"
    (tmp_path / "lever_lm" / "toy").mkdir(parents=True)
    package.mkdir()
    (tmp_path / "lever_lm" / "__init__.py").write_text("from . import toy\n")
    (tmp_path / "lever_lm" / "toy" / "__init__.py").write_text("from lever_lm.lvlm import flamingo\n")
    (package / "__init__.py").write_text("")
    (package / "flamingo.py").write_text("from lever_lm.lvlm.flamingo import _own\nfrom .base import __all__\n")
    (package / "factory.py").write_text(
        "import importlib\n"
        "def f():\n"
        "    from ..toy.lvlm import tiny_dims\n"
        "    from .flamingo import _aliases, public\n"
        "    importlib.import_module('lever_lm.toy.pretrain')\n"
    )
    assert toy_imports(tmp_path) == [
        "lever_lm/__init__.py:1: lever_lm toy",
        "lever_lm/lvlm/factory.py:3: lever_lm.toy.lvlm tiny_dims",
        "lever_lm/lvlm/factory.py:5: lever_lm.toy.pretrain",
    ]
    assert private_imports(tmp_path) == ["lever_lm/lvlm/factory.py:4: _aliases from lever_lm.lvlm.flamingo"]
