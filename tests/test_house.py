"""The house's size rule (issue 31): every function in facetl is at most 50 lines long and takes at most 7 parameters.

Lines run from `def` to the function's last line (decorators are not counted). Parameters are the named ones:
self and cls are not counted, nor *args and **kwargs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "facetl"
MAX_LINES = 50
MAX_PARAMETERS = 7


def functions(tree: ast.AST):
    """Every def and async def in a module, nested ones and methods included, with its qualified name."""
    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def length(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return function.end_lineno - function.lineno + 1


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    named = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    if named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return len(named)


def oversized(source: str, where: str) -> list[str]:
    """One line per function of `source` that breaks the rule: where:name and its size."""
    found = []
    for name, function in functions(ast.parse(source)):
        if length(function) > MAX_LINES:
            found.append(f"{where}:{function.lineno} {name}: {length(function)} lines (> {MAX_LINES})")
        if parameter_count(function) > MAX_PARAMETERS:
            found.append(f"{where}:{function.lineno} {name}: {parameter_count(function)} parameters "
                         f"(> {MAX_PARAMETERS})")
    return found


def test_every_function_in_facetl_is_short_and_takes_few_parameters():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50, "the package was not found where the test expects it"
    found = [line for path in files
             for line in oversized(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert not found, f"{len(found)} functions break the size rule:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    # 51 lines from def to the end: one too many; the decorator line is not counted
    ("@decorator\ndef long():\n" + "    x = 1\n" * 50, ["long: 51 lines"]),
    ("@decorator\ndef fits():\n" + "    x = 1\n" * 49, []),
    # self, cls, *args and **kwargs are not counted; keyword-only ones are
    ("class C:\n    def method(self, a, b, c, d, e, f, g, *args, **kwargs):\n        pass\n", []),
    ("class C:\n    def method(self, a, b, c, d, e, f, g, *, h):\n        pass\n", ["C.method: 8 parameters"]),
    ("def outer():\n    def inner(a, b, c, d, e, f, g, h):\n        pass\n", ["outer.inner: 8 parameters"]),
    ("async def served(a, b, c, d, e, f, g, /, h):\n    pass\n", ["served: 8 parameters"]),
])
def test_the_rule_measures_what_it_says(source, expected):
    found = oversized(source, "example.py")
    assert len(found) == len(expected), found
    for line, needle in zip(found, expected):
        assert needle in line and line.startswith("example.py:"), line
