"""Packaging: import works without the extension and without Triton; imports point downward only."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gro_kernels"


def test_import_without_extension_or_triton():
    code = textwrap.dedent("""
        import sys
        # A None entry in sys.modules makes `import X` raise ImportError, as if X were not installed.
        sys.modules["triton"] = None
        sys.modules["gro_kernels._C"] = None
        import torch, gro_kernels
        assert "not available" in gro_kernels.native_status(), gro_kernels.native_status()
        assert gro_kernels.selected_backend("cpu") == "chunked/torch"
        h = torch.randn(5, 4); w = torch.randn(9, 4); t = torch.randint(0, 9, (5,))
        lp = gro_kernels.linear_logprobs(h, w, t)
        ref = torch.log_softmax(h @ w.t(), -1).gather(1, t[:, None])[:, 0]
        torch.testing.assert_close(lp, ref)
        assert sys.modules["triton"] is None
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
NATIVE = "gro_kernels._C"  # the compiled extension: a leaf of the graph


def _resolve(name):
    """The package module an imported dotted name lands in (a module, else the package defining the name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path):
    """Every gro_kernels module `path` imports, at any depth (imports inside functions count)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            if not module or not module.startswith("gro_kernels"):
                continue
            for alias in node.names:  # `from pkg import sub` imports the submodule sub, else pkg itself
                if f"{module}.{alias.name}" == NATIVE:
                    continue
                target = _resolve(f"{module}.{alias.name}") if f"{module}.{alias.name}" in MODULES else _resolve(module)
                if target and target != here:
                    yield target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gro_kernels") and _resolve(alias.name) != here:
                    yield _resolve(alias.name)


GRAPH = {name: sorted(set(_imports(path))) for name, path in MODULES.items()}

# Who may import whom (prefix rules): trainer -> public names; modules -> losses -> functional ->
# ops/<op> -> ops/common, _ext. presets and _validate sit below the loss layer.
ALLOWED = {
    "gro_kernels.trainer": ("gro_kernels.trainer",),
    # integrations: the public face (like trainer), plus functional for the head with its statistics
    "gro_kernels.integrations": ("gro_kernels.integrations", "gro_kernels.functional"),
    "gro_kernels.modules": ("gro_kernels.losses", "gro_kernels.functional", "gro_kernels.presets"),
    "gro_kernels.losses": ("gro_kernels.losses", "gro_kernels.functional", "gro_kernels.ops.", "gro_kernels.presets",
                           "gro_kernels._validate", "gro_kernels._ext"),
    "gro_kernels.functional": ("gro_kernels.ops.", "gro_kernels._validate", "gro_kernels._ext"),
    "gro_kernels.presets": (),
    "gro_kernels._validate": ("gro_kernels.ops.common.chunking",),
    "gro_kernels._ext": (),
    "gro_kernels.ops.common": ("gro_kernels.ops.common", "gro_kernels._ext"),
}


# Layers that sit on the public names (`import gro_kernels`) and nothing below them.
PUBLIC_ONLY = ("gro_kernels.trainer", "gro_kernels.integrations")


def _layer(module):
    if module.startswith("gro_kernels.ops.") and not module.startswith("gro_kernels.ops.common"):
        return "gro_kernels.ops." + module.split(".")[2]  # one op: its own folder, ops.common and _ext
    return max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len, default=None)


def _allowed(layer):
    if layer.startswith("gro_kernels.ops.") and layer not in ALLOWED:
        return (layer, "gro_kernels.ops.common", "gro_kernels._ext")
    return ALLOWED[layer]


def test_imports_point_one_way():
    bad = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer is None:  # the package face (gro_kernels/__init__.py) re-exports every layer
            continue
        allowed = _allowed(layer)
        for target in targets:
            trainer_public = layer in PUBLIC_ONLY and target == "gro_kernels"
            if not trainer_public and not any(target == a or target.startswith(a.rstrip(".") + ".") or
                                              (a.endswith(".") and target.startswith(a)) for a in allowed):
                bad.append(f"{module} imports {target}")
    assert not bad, "imports against the layer direction:\n" + "\n".join(bad)


def test_no_import_cycle():
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in GRAPH.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in GRAPH:
        if node not in state:
            visit(node)


def test_at_most_two_private_top_level_modules():
    private = sorted(p.name for p in PACKAGE.glob("_*.py") if p.name != "__init__.py")
    assert len(private) <= 2, f"private modules at the package top: {private}; give them a layer folder"


def test_the_rules_catch_a_cycle_and_an_upward_import():
    """The checks above are only worth something if they fail: feed them a graph that breaks both rules."""
    global GRAPH
    saved = GRAPH
    GRAPH = dict(saved, **{"gro_kernels.functional": saved["gro_kernels.functional"] + ["gro_kernels.losses.gro"]})
    try:
        with pytest.raises(AssertionError, match="import cycle"):
            test_no_import_cycle()
        with pytest.raises(AssertionError, match="gro_kernels.functional imports gro_kernels.losses.gro"):
            test_imports_point_one_way()
    finally:
        GRAPH = saved


def test_ops_never_import_each_other():
    for module, targets in GRAPH.items():
        if module.startswith("gro_kernels.ops.") and not module.startswith("gro_kernels.ops.common"):
            op = module.split(".")[2]
            for target in targets:
                if target.startswith("gro_kernels.ops.") and target.split(".")[2] not in (op, "common"):
                    raise AssertionError(f"{module} imports op {target.split('.')[2]}")


def test_trainer_uses_only_the_public_api():
    for module, targets in GRAPH.items():
        if module.startswith("gro_kernels.trainer"):
            for target in targets:
                assert not target.startswith("gro_kernels.ops"), f"{module} imports {target}"
                assert not target.startswith("gro_kernels._"), f"{module} imports private {target}"
                assert target == "gro_kernels" or target.startswith("gro_kernels.trainer"), \
                    f"{module} imports {target}, not a public name"


def test_nothing_imports_integrations_and_import_loads_no_framework():
    """gro_kernels.integrations is optional: no other module imports it, and `import gro_kernels` loads
    neither it nor trl / transformers."""
    bad = [m for m, targets in GRAPH.items() if not m.startswith("gro_kernels.integrations")
           and any(t.startswith("gro_kernels.integrations") for t in targets)]
    assert not bad, f"modules importing gro_kernels.integrations: {bad}"
    code = ("import sys, gro_kernels; loaded = [m for m in ('trl', 'transformers', 'gro_kernels.integrations') "
            "if m in sys.modules]; print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


def test_import_loads_no_integration():
    """gro_kernels.integrations (and the trainers it wraps) load only when asked for: they are optional."""
    code = ("import sys, gro_kernels; loaded = [m for m in sys.modules if m.startswith(('gro_kernels.integrations', "
            "'trl', 'verl', 'transformers'))]; print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
