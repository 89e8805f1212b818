"""The README against the code: every error code the API can answer with is in its error
table, with its HTTP status, and the table lists no code the API does not return."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from clearmark.workers.api import UPLOAD_STATUS

ROOT = Path(__file__).resolve().parent.parent
# The API answers with its own codes (these modules), and passes on the BadInput codes of
# the next ones (status from UPLOAD_STATUS, else 422).
API_MODULES = (
    "workers/api.py",
    "workers/api_errors.py",
    "workers/api_guard.py",
    "workers/slow_clients.py",
    "workers/review_web.py",
)
PASSED_ON = ("pipeline/imaging.py", "workers/storage.py", "workers/webhooks.py", "workers/review_mask.py")
NOT_ANSWERED = {"unsafe_key"}  # api.py answers a bad source key with invalid_source_uri


def _string(node) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):  # f"http_{exc.status_code}"
        return "".join(v.value if isinstance(v, ast.Constant) else "<status>" for v in node.values)
    return None


def api_codes() -> dict[str, set[str]]:
    """Code -> the HTTP statuses it is answered with ("any" for http_<status>)."""
    codes: dict[str, set[str]] = {}
    answering = [ast.parse((ROOT / m).read_text()) for m in API_MODULES]
    for node in (n for tree in answering for n in ast.walk(tree)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") in ("ApiError", "_error", "error_response")
            and len(node.args) >= 2
            and (code := _string(node.args[1]))
        ):
            status = node.args[0]
            codes.setdefault(code, set()).add(
                str(status.value) if isinstance(status, ast.Constant) else "any"
            )
    for module in PASSED_ON:
        for node in ast.walk(ast.parse((ROOT / module).read_text())):
            code = None
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                keyword = next((k.value for k in node.keywords if k.arg == "code"), None)
                code = (
                    _string(keyword)
                    if keyword is not None
                    else (_string(node.args[1]) if name == "_refuse" and len(node.args) > 1 else None)
                )
            elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["code"]:
                code = _string(node.value)
            if code and code not in NOT_ANSWERED:
                codes.setdefault(code, set()).add(str(UPLOAD_STATUS.get(code, 422)))
    return codes


def readme_codes() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("**Errors**") : text.index("A rejected upload")]
    codes: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("status", "---"):
            for code in re.findall(r"`([a-z_<>0-9]+)`", cells[1]):
                codes.setdefault(code, set()).add(cells[0] if cells[0].isdigit() else "any")
    return codes


def test_readme_error_table_matches_the_api():
    expected, documented = api_codes(), readme_codes()
    assert "callback_unresolvable" in expected and "not_ready" in expected  # the scan works
    assert sorted(set(expected) - set(documented)) == [], "codes missing from the README table"
    assert sorted(set(documented) - set(expected)) == [], "README codes the API never returns"
    wrong = {c: (documented[c], s) for c, s in expected.items() if documented[c] != s}
    assert wrong == {}, "README status differs from the API's: code: (README, API)"


def test_the_code_cites_only_documents_the_repository_holds():
    """A clone has no ../shared: every `NAME.md` a module cites is in the repository."""
    cited = {
        (path.relative_to(ROOT).as_posix(), name)
        for folder in ("clearmark", "models", "engine_build", "pipeline", "workers", "migrations", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        for name in re.findall(r"\b([A-Z][A-Z_]*\.md)\b", path.read_text())
    }
    missing = sorted((where, name) for where, name in cited if not (ROOT / name).is_file())
    assert cited and not missing, missing
