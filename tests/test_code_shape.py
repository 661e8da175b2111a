"""The code-shape rule of the training package (issue 10): no function in omni_ds/, launch/ or
tools/ is over 60 lines or takes more than 8 parameters (self / cls not counted). A function that
grows past it should be split by concern, or its options grouped in a small dataclass."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES, MAX_PARAMS = 60, 8


def _functions():
    for root in ("omni_ds", "launch", "tools"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(REPO), node


def _params(fn) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return len(names) - (1 if names and names[0] in ("self", "cls") else 0)


def test_no_function_is_too_long_or_takes_too_many_parameters():
    too_long = [f"{p}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
                for p, fn in _functions() if fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    too_wide = [f"{p}:{fn.lineno} {fn.name} ({_params(fn)} parameters)"
                for p, fn in _functions() if _params(fn) > MAX_PARAMS]
    assert not too_long and not too_wide, "\n".join(too_long + too_wide)
