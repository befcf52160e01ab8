"""Packaging: import works without the extension and without Triton; imports point downward only."""

import ast
import pathlib
import subprocess
import sys
import textwrap

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


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = path.parent
            for _ in range(max(node.level - 1, 0)):
                base = base.parent
            if node.level:
                module = ".".join(base.relative_to(ROOT).parts + ((node.module,) if node.module else ()))
                names = [f"{module}.{a.name}" for a in node.names]
                yield from [module] + names
            elif node.module:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_ops_never_import_each_other():
    for op_dir in (PACKAGE / "ops").iterdir():
        if not op_dir.is_dir() or op_dir.name.startswith("__"):
            continue
        for path in op_dir.rglob("*.py"):
            for name in _imports(path):
                if name.startswith("gro_kernels.ops."):
                    other = name.split(".")[2]
                    assert other == op_dir.name, f"{path.relative_to(ROOT)} imports op {other}"


def test_trainer_uses_only_the_public_api():
    trainer = PACKAGE / "trainer"
    if not trainer.exists():
        return
    for path in trainer.rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith("gro_kernels.ops"), f"{path.relative_to(ROOT)} imports {name}"
            assert not name.startswith("gro_kernels._"), f"{path.relative_to(ROOT)} imports private {name}"
