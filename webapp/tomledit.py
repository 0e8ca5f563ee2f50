"""Our keys changed in the user's TOML text, every other byte kept (tomlkit, with its rough edges filed).

Only the write path imports this module, and with it tomlkit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webapp.errors import ConfigError

if TYPE_CHECKING:
    from tomlkit import TOMLDocument

Values = Mapping[str, str | int | None]  # our key -> its new value, or None to remove it


def edit_auth(path: Path, text: str, values: Values) -> str:
    """The new text: our keys changed, every other byte kept (a BOM and CRLF endings included)."""
    import tomlkit

    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text.removeprefix(bom)
    crlf = "\r\n" in body and body.count("\n") == body.count("\r\n")
    body = body.replace("\r\n", "\n") if crlf else body
    try:
        doc = tomlkit.parse(body)
        if "auth" in doc:
            roundtrip = tomlkit.dumps(doc)
            for key, value in values.items():  # set before removing: an emptied split table moves
                if value is not None:
                    _set(doc["auth"], key, value)
            removed = [key for key, value in values.items() if value is None and key in doc["auth"]]
            for key in removed:
                del doc["auth"][key]  # doc["auth"] afresh each time: a proxy goes stale after a delete
            edited = _drop_auth(doc) if removed and len(doc["auth"]) == 0 else tomlkit.dumps(doc)
            body = edited if roundtrip == body else _keep_lines(body, roundtrip, edited)
        elif new := {key: value for key, value in values.items() if value is not None}:
            # Appended as text, so that removing it later gives back the original bytes.
            body += ("\n" if body.endswith("\n") else "\n\n" if body else "") + tomlkit.dumps({"auth": new})
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path} is not valid TOML (line {exc.line}, column {exc.col})") from None
    except tomlkit.exceptions.TOMLKitError:
        raise ConfigError(f"cannot edit the [auth] table of {path}") from None
    return bom + (body.replace("\n", "\r\n") if crlf else body)


def _keep_lines(original: str, roundtrip: str, edited: str) -> str:
    """Lines the edit did not touch, byte for byte: tomlkit rewrites a few (`[1979-05-27 ]` loses a space)."""
    old, base, new = (text.splitlines(keepends=True) for text in (original, roundtrip, edited))
    if len(old) != len(base):
        return edited
    lines: list[str] = []
    import difflib

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, base, new, autojunk=False).get_opcodes():
        lines.extend(old[i1:i2] if tag == "equal" else new[j1:j2])
    return "".join(lines)


def _set(auth: Any, key: str, value: str | int) -> None:
    """Set a key; a new one goes after [auth]'s last key, not after the comments that end it."""
    from tomlkit import item
    from tomlkit.items import AoT, Comment, Table

    body = auth.value.body if isinstance(auth, Table) and not auth.is_super_table() else []
    last = max((i for i, (name, _) in enumerate(body) if name is not None), default=None)
    trailing = last is not None and any(isinstance(rest, Comment) for _, rest in body[last + 1 :])
    if key in auth or last is None or not trailing or isinstance(body[last][1], (Table, AoT)):
        auth[key] = value
        return
    new = item(value)
    new.trivia.indent = body[last][1].trivia.indent
    auth.value._insert_after(body[last][0], key, new)
    dict.__setitem__(auth, key, new)


def _drop_auth(doc: TOMLDocument) -> str:
    """Remove the emptied [auth]: its header goes, the comments inside it stay where they were."""
    import tomlkit
    from tomlkit.items import Comment, InlineTable, Table

    auth = doc["auth"]
    if isinstance(auth, InlineTable) and auth.trivia.comment:
        return tomlkit.dumps(doc)  # `auth = {} # note`: keep it rather than lose the note
    if not isinstance(auth, Table) or auth.is_super_table():
        del doc["auth"]
        return tomlkit.dumps(doc)
    import secrets

    marker, name = f"codex-portal-{secrets.token_hex(8)}", auth.display_name
    auth.display_name = marker  # find the header in the output by a name that cannot occur
    text, trivia, inner = tomlkit.dumps(doc), auth.trivia, auth.as_string()
    header = f"[{marker}]{trivia.comment_ws}{trivia.comment}{trivia.trail}"
    start = text.find(header)
    end = start + len(header) + len(inner)
    found = start >= len(trivia.indent) and text[start - len(trivia.indent) : start] == trivia.indent
    if not found or text[end - len(inner) : end] != inner:
        auth.display_name = name  # not laid out as expected: keep the empty header, lose nothing
        return tomlkit.dumps(doc)
    head, tail = text[: start - len(trivia.indent)], text[end:]
    if trivia.comment or any(isinstance(item, Comment) for _, item in auth.value.body):
        indent = trivia.indent[: trivia.indent.rfind("\n") + 1]
        return head + indent + (trivia.comment + trivia.trail if trivia.comment else "") + inner + tail
    if not tail and head.endswith("\n\n"):
        head = head[:-1]  # the blank line that separated [auth] from what came before
    return head + tail
