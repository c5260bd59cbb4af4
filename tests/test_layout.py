"""The layers stay layers: every import of every medtune module is checked against the rules below.

    config, files   nothing of medtune (and no torch: a bad config is reported before torch loads)
    data            config, files
    models          config, files, data
    eval            config, files, data, models
    runtime         config, files, data, models, eval (what every command shares: launch, process group, watchdog,
                    preflight, the run's record, tracking, sweeps); nothing below it imports it
    training        config, files, data, models, eval (the eval stage runs inside a training run), runtime, memory
    report          config, files, eval, runtime (tracking, to publish to W&B)
    memory          config, files, models.arch_spec (no torch: memory is planned before anything loads)
    bench           anything below it (runtime for the process group, training to time its step)
    export          config, files, data, models, eval (a top layer: merges, writes, checks; nothing imports it)
    search          config, files, data, eval (a top layer: runs medtune.train as subprocesses, reads their files)
    commands        medtune/train.py, medtune/evaluate.py (the two Hydra runs), and `python -m medtune.<pkg>`, whose
                    <pkg>/__main__.py only calls <pkg>/cli.py's main (the arguments, in its package's layer);
                    nobody imports a command, and only its own __main__ imports a cli module; medtune/evaluate.py
                    imports nothing of training (it scores through runtime: shards, eval_model), so only the
                    training command and bench/ reach into training from outside it

Also: no import circle between modules, no private name imported from another module, and modules and functions
short enough to read (the sizes ../shared/STYLE.md asks for, with a little slack).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "medtune"
ALLOWED = {
    "config": set(),
    "files": set(),
    "data": {"config", "files"},
    "models": {"config", "files", "data"},
    "eval": {"config", "files", "data", "models"},
    "runtime": {"config", "files", "data", "models", "eval"},
    "training": {"config", "files", "data", "models", "eval", "runtime", "memory"},
    "report": {"config", "files", "eval", "runtime"},
    "memory": {"config", "files", "models"},
    "bench": {"config", "files", "data", "models", "eval", "runtime", "training", "memory"},
    "export": {"config", "files", "data", "models", "eval"},
    "search": {"config", "files", "data", "eval"},
}
MEMORY_MODELS = {"medtune.models.arch_spec"}  # the only piece of models the torch-free estimator may read
TORCH_FREE = ("config", "files", "memory")
COMMANDS = {"medtune.train", "medtune.evaluate"}
NOT_TRAINING = {"medtune.evaluate"}  # commands that must not import training (the evaluation runs over runtime/)
MAX_MODULE_LINES = 330
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{module}" if module else base
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (module, alias.name, node.lineno))
    return out


def _owner(module: str) -> str | None:
    """The medtune module a dotted import resolves to (a name inside a module resolves to the module)."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def _is_command(module: str) -> bool:
    return module in COMMANDS or module.endswith(".__main__")


def test_imports_follow_the_layers() -> None:
    broken = []
    for name, path in sorted(MODULES.items()):
        layer = _layer(name)
        for imported, _, line in _imports(name, path):
            if not imported.startswith("medtune"):
                continue
            target = _owner(imported)
            where = f"{path.relative_to(REPO)}:{line} imports {imported}"
            if target is None or target == "medtune":
                continue
            if _is_command(target) and not (name.endswith(".__main__") and _layer(target) == layer):
                broken.append(f"{where}: a command module")
                continue
            if target.endswith(".cli") and name != target.removesuffix(".cli") + ".__main__":
                broken.append(f"{where}: a command's arguments (only its __main__ imports it)")
                continue
            if name in NOT_TRAINING and _layer(target) == "training":
                broken.append(f"{where}: the {name} command imports nothing of training (use runtime/)")
                continue
            if layer is None or _is_command(name):
                continue  # other commands and medtune/__init__ may import any layer
            other = _layer(target)
            if other == layer:
                continue
            if other not in ALLOWED[layer]:
                broken.append(f"{where}: {layer}/ may import {sorted(ALLOWED[layer]) or 'nothing of medtune'}")
            elif layer == "memory" and other == "models" and target not in MEMORY_MODELS:
                broken.append(f"{where}: memory/ may read only {sorted(MEMORY_MODELS)} of models")
    assert not broken, "\n".join(broken)


def test_config_files_and_memory_never_import_torch() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for name, path in MODULES.items()
        if _layer(name) in TORCH_FREE
        for imported, _, line in _imports(name, path)
        if imported.split(".")[0] in ("torch", "transformers", "peft", "bitsandbytes")
    ]
    assert not found, "\n".join(found)


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for imported, _, _ in _imports(name, path):
            target = _owner(imported) if imported.startswith("medtune") else None
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                graph[name].add(target)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(MODULES):
        if start not in state and (cycle := visit(start, [start])):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_no_private_name_crosses_modules() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line} imports {imported_name} from {imported}"
        for name, path in MODULES.items()
        for imported, imported_name, line in _imports(name, path)
        if imported.startswith("medtune")
        and imported_name
        and imported_name.startswith("_")
        and not imported_name.startswith("__")
    ]
    assert not found, "\n".join(found)


def test_only_commands_sit_at_the_top() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "evaluate.py", "train.py"], flat


def test_modules_and_functions_stay_short() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(REPO)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            size = node.end_lineno - node.lineno if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else 0
            if size > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}() is {size} lines")
    assert not long, "\n".join(long)


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: an upward import is reported (a test that could not fail would prove nothing)."""
    path = PACKAGE / "data" / "_layout_probe.py"
    path.write_text("from medtune.training.recipe import TrainRecipe\n", encoding="utf-8")
    try:
        MODULES["medtune.data._layout_probe"] = path
        try:
            test_imports_follow_the_layers()
        except AssertionError as err:
            assert "_layout_probe.py:1 imports medtune.training.recipe" in str(err)
        else:
            raise AssertionError("an import from data/ to training/ was not reported")
    finally:
        MODULES.pop("medtune.data._layout_probe", None)
        path.unlink()


def test_the_evaluate_rule_catches_a_training_import() -> None:
    """`medtune.evaluate` importing training (as it once did, for the FSDP wrapper) is reported."""
    path = PACKAGE / "evaluate.py"
    probe = path.with_name("_evaluate_probe.py")
    probe.write_text(path.read_text(encoding="utf-8") + "\nfrom medtune.training import distributed\n")
    saved = MODULES["medtune.evaluate"]
    try:
        MODULES["medtune.evaluate"] = probe
        try:
            test_imports_follow_the_layers()
        except AssertionError as err:
            line = path.read_text(encoding="utf-8").count("\n") + 2  # the appended import
            wanted = f"_evaluate_probe.py:{line} imports medtune.training.distributed: the medtune.evaluate command"
            assert wanted in str(err), str(err)
        else:
            raise AssertionError("an import from medtune.evaluate to training/ was not reported")
    finally:
        MODULES["medtune.evaluate"] = saved
        probe.unlink()


def test_every_package_command_has_one_form() -> None:
    """`python -m medtune.<pkg>`: <pkg>/__main__.py imports main from <pkg>/cli.py and exits with what it returns."""
    odd = []
    for main in sorted(PACKAGE.glob("*/__main__.py")):
        pkg = main.parent.name
        tree = ast.parse(main.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)]
        wanted = [(f"medtune.{pkg}.cli", ["main"])]
        found = [(getattr(node, "module", None), [a.name for a in node.names]) for node in imports]
        if found != wanted or "raise SystemExit(main())" not in main.read_text():
            odd.append(f"{main.relative_to(REPO)}: imports {found}")
        if not (main.parent / "cli.py").is_file():
            odd.append(f"{main.relative_to(REPO)}: no cli.py beside it")
    assert not odd, "\n".join(odd)
