"""The import rules of ../shared/ARCHITECTURE.md, checked by reading every module's imports."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "vault"
PURE = {"pack", "index", "crypto", "compress", "chunker", "model", "ids", "errors", "excludes", "timespec", "keys",
        "jsonshape"}
ENGINES = {"archiver", "restorer", "checker", "pruner", "dumper", "repairer", "copier"}
ABOVE_REPOSITORY = {"api", "session", "cli", "config", "archiver", "restorer", "checker", "pruner", "repairer",
                    "copier", "catalog", "packwriter", "filereader", "backup_workers", "dumper"}


def _modules():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(rel.parts), path


def _imports(path: Path, modname: str) -> set[str]:
    """Top-level vault module names (and 'click', os.environ use) a module refers to."""
    tree = ast.parse(path.read_text())
    pkg_parts = ["vault", *modname.split(".")[:-1]] if not path.name == "__init__.py" else ["vault", *modname.split(".")[:-1]]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                full = ".".join([*base, node.module] if node.module else base)
                if node.module is None:
                    out.update(f"{full}.{a.name}" for a in node.names)
                else:
                    out.add(full)
            else:
                out.add(node.module or "")
        elif isinstance(node, ast.Attribute) and node.attr == "environ":
            out.add("os.environ")
    return out


def _vault_targets(imports: set[str]) -> set[str]:
    return {i.split(".")[1] for i in imports if i.startswith("vault.") and len(i.split(".")) > 1}


def test_only_cli_imports_click():
    for mod, path in _modules():
        if not mod.startswith("cli"):
            assert not any(i == "click" or i.startswith("click.") for i in _imports(path, mod)), mod


def test_only_config_reads_the_environment():
    for mod, path in _modules():
        if mod != "config":
            assert "os.environ" not in _imports(path, mod), f"{mod} reads os.environ"


def test_pure_modules_do_no_io_layers():
    for mod, path in _modules():
        if mod in PURE:
            bad = _vault_targets(_imports(path, mod)) - PURE
            assert not bad, f"pure module {mod} imports {bad}"


def test_backends_know_nothing_of_blocks_or_crypto():
    for mod, path in _modules():
        if mod.startswith("backend"):
            bad = _vault_targets(_imports(path, mod)) - {"backend", "errors"}
            assert not bad, f"{mod} imports {bad}"


def test_engines_do_not_import_each_other_and_nothing_below_imports_upward():
    for mod, path in _modules():
        top = mod.split(".")[0]
        targets = _vault_targets(_imports(path, mod)) - {top}
        if top in ENGINES:
            assert not (targets & ENGINES), f"engine {mod} imports {targets & ENGINES}"
        if top in {"repository", "model", *PURE} or top == "backend":
            assert not (targets & ABOVE_REPOSITORY), f"{mod} imports upward: {targets & ABOVE_REPOSITORY}"
        if top not in ("cli", "__main__"):
            assert "cli" not in targets, f"{mod} imports the CLI"
