"""The house's shape (issue 24): no import cycle in the package, rule files a reader can hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mvfcnn"
RULES = ROOT / "workflow" / "rules"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """mvfcnn module -> the mvfcnn modules it imports anywhere (top level or in a function)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                # `from mvfcnn.models import fcn` names the module mvfcnn.models.fcn
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("mvfcnn"):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order), or None; a package importing its own
    submodules (`mvfcnn.models` -> `mvfcnn.models.fcn`) is how packages work, not a cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_through_a_function_level_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None  # a package and its submodule


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"mvfcnn.fcn.train", "mvfcnn.models.fcn", "mvfcnn.cli"} <= graph.keys()
    assert "mvfcnn.models.fcn" in graph["mvfcnn.fcn.stage_model"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_modules_stay_short():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
               for p in PACKAGE.rglob("*.py")}
    assert max(lengths.values()) <= 450, {k: v for k, v in lengths.items() if v > 450}


def test_rule_files_stay_short():
    lengths = {p.relative_to(RULES).as_posix(): len(p.read_text().splitlines())
               for p in RULES.rglob("*.smk")}
    assert lengths["common.smk"] <= 250, lengths
    assert max(lengths.values()) <= 300, lengths


#: the report: tables, figures and summaries are made after the DAG, never needed by it
REPORT_PACKAGE = "mvfcnn.report"
REPORT_MODULES = {"mvfcnn.evaluation.crossval", "mvfcnn.evaluation.crossval_objects"}


def test_building_the_dag_imports_no_report_module():
    graph = import_graph()
    pattern = re.compile(r"^\s*from\s+(mvfcnn[\w.]*)\s+import\s+([\w, ]+)", re.M)
    workflow = [ROOT / "workflow" / "Snakefile", *RULES.rglob("*.smk")]
    roots = set()
    for path in workflow:
        for module, names in pattern.findall(path.read_text()):
            for name in (n.strip().split(" ")[0] for n in names.split(",")):
                roots.add(f"{module}.{name}" if f"{module}.{name}" in graph else module)
    assert {"mvfcnn.core.config", "mvfcnn.core.runs", "mvfcnn.core.layout"} <= roots
    reached, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, ()))
    report = REPORT_MODULES | {m for m in graph if m.startswith(REPORT_PACKAGE + ".")}
    assert REPORT_MODULES <= graph.keys() and len(report) > len(REPORT_MODULES)
    assert not reached & report, sorted(reached & report)


def function_level_imports() -> list[tuple[str, int, bool]]:
    """(module file, line, has a reason) of every mvfcnn import inside a function; the reason is
    a comment on the import or on the block of imports it belongs to."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for func in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue  # (a `nonlocal` statement has names too)
                module = getattr(node, "module", None) or ""
                names = [a.name for a in getattr(node, "names", [])]
                if not (isinstance(node, ast.ImportFrom) and (module.startswith("mvfcnn")
                                                              or node.level)
                        or isinstance(node, ast.Import) and any(n.startswith("mvfcnn")
                                                                for n in names)):
                    continue
                row, reason = node.lineno - 1, False
                while row >= 0 and not reason:
                    text = lines[row].strip()
                    reason = "#" in text
                    if text and not (text.startswith(("import ", "from ", "#"))):
                        break
                    row -= 1
                found.append((str(path.relative_to(PACKAGE)), node.lineno, reason))
    return found


def test_few_imports_inside_functions_and_each_says_why():
    found = function_level_imports()
    assert len(found) <= 15, found
    assert all(reason for *_, reason in found), [f for f in found if not f[2]]
