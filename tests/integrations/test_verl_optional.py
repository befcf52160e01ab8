"""The verl plug-in is optional: without verl, importing it fails with a message that says what is missing,
and gro_kernels itself never imports verl. (Runs in the main environment; the seam tests with verl installed
are in tests/integrations/verl/, run by `make test-verl`.)"""

import ast
import pathlib
import subprocess
import sys
import textwrap

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "gro_kernels"


def _run(code):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_import_without_verl_raises_a_clear_import_error():
    out = _run("""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        sys.modules["verl"] = None  # as if verl were not installed, whatever this environment holds
        try:
            import gro_kernels.integrations.verl
        except ImportError as exc:
            print("MESSAGE", exc)
        else:
            raise SystemExit("imported without verl")
    """)
    message = out.stdout.split("MESSAGE", 1)[1]
    assert "gro_kernels.integrations.verl is the verl plug-in and needs verl" in message, message
    assert "pip install verl==0.9.1" in message and "gro_kernels itself does not need verl" in message, message
    assert "gro-kernels verl plug-in not loaded" in out.stderr, out.stderr  # verl would swallow the error


def test_import_gro_kernels_never_imports_verl_or_the_integrations():
    out = _run("""
        import sys
        import gro_kernels, gro_kernels.modules, gro_kernels.functional
        print(sorted(m for m in sys.modules if m == "verl" or m.startswith(("verl.", "gro_kernels.integrations"))))
    """)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_module_outside_the_plugin_names_verl():
    """Statically, at any depth (imports inside functions count): only integrations/verl.py imports verl."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "verl" or n.startswith("verl.") for n in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert sorted(set(offenders)) == ["integrations/verl.py"], offenders
