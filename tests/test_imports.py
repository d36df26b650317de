"""Imports run downward only: each package imports only packages of lower layers (LAYERS, lowest
first), and a function-local import exists only to defer a heavy or optional dependency, with its
reason in a comment above it."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first; packages of one layer do not import each other.
LAYERS = (
    ("errors",),
    ("config",),
    ("outputs", "provenance", "devices"),
    ("modules",),
    ("datasets",),
    ("detector", "evaluation"),
    ("pairs",),
    ("checkpoints",),
    ("training", "retrieval"),
    ("serving",),
    ("cli",),
    ("demo",),
    ("tools", "bench", "train", "test", "testall"),
)
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def modules():
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name not in ("tests",
                                                                                                "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), ast.parse(open(path, encoding="utf-8").read())


def imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [] if node.level else [node.module]


def test_every_package_has_a_layer():
    packages = {path.split(os.sep)[0].removesuffix(".py") for path, _ in modules()}
    assert packages == set(LAYER)


def test_imports_run_downward_only():
    upward = []
    for path, tree in modules():
        own = path.split(os.sep)[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for module in imported(node):
                    other = module.split(".")[0]
                    if other in LAYER and other != own and LAYER[other] >= LAYER[own]:
                        upward.append(f"{path}:{node.lineno} imports {module}")
    assert upward == []


def local_imports(tree):
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def test_every_function_local_import_says_why():
    """The line above its block (imports, and the `try:` / `except` around them) is a comment, or
    the import line carries one."""
    silent = []
    for path, tree in modules():
        lines = open(os.path.join(ROOT, path), encoding="utf-8").read().split("\n")
        for node in local_imports(tree):
            if "#" in lines[node.end_lineno - 1]:
                continue
            above = node.lineno - 2
            while above >= 0 and (lines[above].strip().startswith(("import ", "from ", "except")) or
                                  lines[above].strip() == "try:"):
                above -= 1
            if above < 0 or not lines[above].strip().startswith("#"):
                silent.append(f"{path}:{node.lineno}")
    assert silent == []


@pytest.mark.parametrize("package", ["config", "errors", "outputs", "provenance"])
def test_the_light_packages_import_no_torch(package):
    """The command lines are parsed with these before torch is imported (tests/test_cli_startup.py)."""
    for path, tree in modules():
        if path.split(os.sep)[0].removesuffix(".py") == package:
            top = [module for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                   for module in imported(node)]
            assert not [module for module in top if module.split(".")[0] in ("torch", "transformers")], path
