"""Rules of the codebase that a reader cannot see break: checked on the source itself.

- Only the command line (scripts/) speaks of command-line flags: no string in the library
  packages names one. A library message names the input that was wrong (`host`), and the CLI
  shows it as the flag (`--host`).
- An import inside a function only defers a heavy library, and says so (`# lazy: ...`): no
  function-level import hides a cycle or defers nothing.
- The README's Python examples use the `hwnas` front door.
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


# ---- imports inside functions: only to defer a heavy library, and saying so -----------------
#: libraries whose import costs enough (torch and pymoo seconds; the others tenths) that a module
#: which does not otherwise need them imports them inside the function that does
HEAVY = {"torch", "lightgbm", "pymoo", "ray", "onnxruntime", "onnx", "matplotlib", "sklearn", "pandas", "pyarrow",
         "scipy"}


class ImportGraph:
    """The module-level imports of the library packages under `root` (a module's parent packages
    included, as Python runs them first; `if TYPE_CHECKING:` blocks left out), and the heavy
    libraries each module loads when imported."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self.files = {self._name(p): p for package in LIBRARY for p in (root / package).rglob("*.py")}
        self.trees = {m: ast.parse(p.read_text(), str(p)) for m, p in self.files.items()}
        self.edges: dict[str, set[str]] = {}
        self.libraries: dict[str, set[str]] = {}
        for module, tree in self.trees.items():
            modules, libraries = set(self._parents(module)), set()
            for node in self._module_level_imports(tree.body):
                found, libs = self.loads(module, node)
                modules |= found
                libraries |= libs
            self.edges[module] = modules - {module}
            self.libraries[module] = libraries
        self._heavy: dict[str, frozenset[str]] = {}

    def _name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    @staticmethod
    def _parents(module: str) -> list[str]:
        parts = module.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    def _module_level_imports(self, body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from self._module_level_imports(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                yield from self._module_level_imports(node.body + node.orelse + node.finalbody
                                                      + [n for h in node.handlers for n in h.body])

    def loads(self, module: str, node: ast.Import | ast.ImportFrom) -> tuple[set[str], set[str]]:
        """(library modules, third-party modules by their dotted names) that `node` in `module`
        imports (`from scipy.stats import norm`: scipy.stats and scipy.stats.norm, which may be a
        name rather than a module; either marks scipy.stats as loaded)."""
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif node.level:
            base = module.split(".")[:len(module.split(".")) - node.level + (self.files[module].name == "__init__.py")]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        modules = {n for n in names if n in self.files}
        modules |= {p for n in modules for p in self._parents(n)}
        libraries = {n for n in names if n.split(".")[0] not in LIBRARY and n.split(".")[0]}
        return modules, libraries

    def heavy(self, module: str) -> frozenset[str]:
        """The modules of heavy libraries that importing `module` loads (through its module-level
        imports), by their dotted names."""
        if module not in self._heavy:
            seen, stack = set(), [module]
            while stack:
                m = stack.pop()
                if m not in seen:
                    seen.add(m)
                    stack.extend(self.edges[m])
            self._heavy[module] = frozenset(n for m in seen for n in self.libraries[m] if n.split(".")[0] in HEAVY)
        return self._heavy[module]

    def function_imports(self):
        """(module, import node, lines of its file, the heavy libraries it defers or an empty set)
        for every import inside a function that loads a library module or a heavy library."""
        for module, tree in sorted(self.trees.items()):
            lines = self.files[module].read_text().splitlines()
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        modules, libraries = self.loads(module, node)
                        heavy = {n for n in libraries if n.split(".")[0] in HEAVY}
                        if not modules and not heavy:
                            continue  # a light standard or third-party module: no rule
                        loaded = self.heavy(module)
                        brought = {n.split(".")[0] for n in heavy.union(*(self.heavy(m) for m in modules))
                                   if not any(x == n or x.startswith(n + ".") for x in loaded)}
                        yield module, node, lines, brought


def _says_lazy(node: ast.stmt, lines: list[str]) -> bool:
    """A `# lazy...` comment on the import, on another import of its group, or on the line above
    the group (the consecutive import lines around it)."""
    first = node.lineno - 1
    while first > 0 and lines[first - 1].lstrip().startswith(("import ", "from ", "#")):
        first -= 1
    last = node.end_lineno - 1
    while last + 1 < len(lines) and lines[last + 1].lstrip().startswith(("import ", "from ")):
        last += 1
    return any("# lazy" in line.lower() for line in lines[first:last + 1])


def test_an_import_inside_a_function_defers_a_heavy_library_and_says_so():
    graph = ImportGraph()
    needless, silent = [], []
    for module, node, lines, brought in graph.function_imports():
        where = f"{graph.files[module].relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
        if not brought:
            needless.append(where)
        elif not _says_lazy(node, lines):
            silent.append(f"{where}  (defers {', '.join(sorted(brought))})")
    assert not needless, ("imports inside functions that defer no heavy library: move them to the module's "
                          "top (a cycle they would close is a layering fault to fix):\n" + "\n".join(needless))
    assert not silent, "lazy imports without a `# lazy: why` comment:\n" + "\n".join(silent)


def test_the_import_rule_tells_a_lazy_heavy_import_from_a_needless_one(tmp_path):
    for package, files in {"search": {"__init__.py": "", "light.py": "import json\n",
                                      "heavy.py": "import torch\n",
                                      "user.py": "def f():\n    from search.light import json\n\n\n"
                                                 "def g():\n    # lazy: torch\n    from search.heavy import torch\n"}}.items():
        for name, text in files.items():
            (tmp_path / package).mkdir(exist_ok=True)
            (tmp_path / package / name).write_text(text)
    for package in set(LIBRARY) - {"search"}:
        (tmp_path / package).mkdir()
    found = {(n.lineno, tuple(sorted(brought)), _says_lazy(n, lines))
             for m, n, lines, brought in ImportGraph(tmp_path).function_imports() if m == "search.user"}
    assert found == {(2, (), False), (7, ("torch",), True)}


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
