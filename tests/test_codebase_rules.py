"""Rules of the codebase that a reader cannot see break: checked on the source itself.

- Only the command line (scripts/) speaks of command-line flags: no string in the library
  packages names one. A library message names the input that was wrong (`host`), and the CLI
  shows it as the flag (`--host`).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("profiling", "predictors", "search", "hwnas")
FLAG = re.compile(r"(?<![\w-])--[a-z]")
#: another program's command line quoted in a message (`ray start --head`): its flags, not ours
FOREIGN_COMMAND = re.compile(r"`(?:ray start|nvidia-smi)[^`]*`")
#: the one allowed exception, a function whose output is a user document's command lines, not a
#: message: report.md (written by the library) quotes the `train` commands that reproduce the
#: baseline comparison, and tests/test_baseline_search.py pins them there
COMMAND_LINES_FOR_USERS = {("search/baseline_search.py", "train_commands")}


def _library_files():
    for package in LIBRARY:
        yield from sorted((ROOT / package).rglob("*.py"))


def _argv_elements(tree: ast.AST) -> set[int]:
    """ids of the string constants inside a literal argv list of another program (["nvidia-smi", "--x"])."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("-"):
                skip.update(id(e) for e in node.elts[1:])
    return skip


def _strings(tree: ast.AST, path: Path):
    """(line, text) of every string literal of `tree`; an f-string whole, its fields as `{}`."""
    skip = _argv_elements(tree)
    where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and (where, fn.name) in COMMAND_LINES_FOR_USERS:
            skip.update(id(n) for n in ast.walk(fn))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def flag_mentions(path: Path) -> list[tuple[int, str]]:
    """(line, the text around it) of each string literal of `path` (docstrings included) that
    names a flag."""
    found = []
    for line, text in _strings(ast.parse(path.read_text(), str(path)), path):
        m = FLAG.search(FOREIGN_COMMAND.sub("", text))
        if m:
            found.append((line, FOREIGN_COMMAND.sub("", text)[max(0, m.start() - 40):m.end() + 40]))
    return found


def test_no_library_string_names_a_command_line_flag():
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in _library_files()
             for line, text in flag_mentions(path)]
    assert not found, "library strings naming flags (name the parameter in backticks instead):\n" + "\n".join(found)


def test_the_flag_scan_finds_a_flag_and_passes_another_programs_command_line(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docs for --out."""\nX = "pass --host user@device"\nY = ["nvidia-smi", "--query-gpu=name"]\n'
                      'Z = "start it with `ray start --head`"\nW = "a-b-c and x--y are no flags"\n')
    assert [line for line, _ in flag_mentions(sample)] == [1, 2]


# ---- the README speaks `hwnas` -------------------------------------------------------------
def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_readme_python_examples_use_the_hwnas_front_door():
    import hwnas
    blocks = _python_blocks(ROOT / "README.md")
    assert blocks
    for block in blocks:
        tree = ast.parse(block)  # each example is valid Python
        stages = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                  and any((a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0] in LIBRARY[:3]
                          for a in n.names)]
        assert not stages, f"a README example imports a stage package instead of hwnas: {stages}"
        used = {n.attr for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "hwnas"}
        assert all(hasattr(hwnas, name) for name in used), sorted(n for n in used if not hasattr(hwnas, n))
