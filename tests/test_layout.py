"""The layout holds: no import circle, a light ``import wukong``, one home for the wire."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wukong"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Every wukong module ``path`` imports at run time, at module level or inside functions
    (``if TYPE_CHECKING:`` blocks are for the type checker only)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("wukong.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wukong"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # ``from wukong.store import shm``
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_circle():
    # a package's __init__ importing its own submodules is not a circle of concepts
    g = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph().items()}
    assert find_cycle(g) is None


def test_the_layers_point_one_way():
    g = graph()
    below = {
        "wukong.protocol": set(),
        "wukong.store.store": {"wukong.protocol"},
    }
    for m, allowed in below.items():
        assert {i for i in g[m] if i.startswith("wukong.") and not i.startswith("wukong.store")} <= allowed, m
    for m, deps in g.items():  # nothing below the client reaches up to it
        if m not in ("wukong", "wukong.demo", "wukong.cli"):
            assert "wukong.client" not in deps, m
            # the client sits above the cluster (``Client()`` starts one it owns)
            assert "wukong.cluster" not in deps or m in ("wukong.deploy", "wukong.client"), m
    assert not any(d.startswith("wukong.reference") for m, deps in g.items() for d in deps if m != "wukong.reference")


def test_import_wukong_is_light():
    code = (
        "import sys, wukong\n"
        "heavy = [m for m in ('asyncio', 'boto3', 'botocore', 'wukong.proxy', 'wukong.backends.aws_lambda',"
        " 'wukong.lambda_local', 'dask.array', 'wukong.reference') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_load_on_first_use():
    code = "import wukong; print(wukong.LocalCluster.__module__, wukong.TaskError.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["wukong.cluster", "wukong.errors"]


def test_only_the_protocol_names_keys_and_writes_events():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "protocol.py":
            continue
        text = path.read_text()
        assert '"wk:' not in text and "f'wk:" not in text and 'f"wk:' not in text, path
        assert '"xadd"' not in text and ".xadd(" not in text, path
