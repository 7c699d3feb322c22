"""Reading the files users hand us (catalogs, app specs, tables, traces, plans, settings), bounded in time and
memory: a file larger than ``MAX_DOCUMENT_BYTES``, bytes that are not UTF-8, YAML aliases (an alias bomb
expands to gigabytes from a few hundred bytes) and deeply nested JSON or YAML (the parsers recurse)
each raise the caller's ``JigsawError`` type naming the file, instead of a traceback or a hang."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import JigsawError

MAX_DOCUMENT_BYTES = 256 << 20  # the shipped profile table is 96 KB; a trace of a year of seconds ~ 30 MB


def read_text(path: Path, error: type[JigsawError], what: str = "file") -> str:
    """The file's text (UTF-8, a BOM allowed)."""
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise error(f"{size} bytes exceeds the {MAX_DOCUMENT_BYTES >> 20} MiB a {what} may have", file=str(path),
                        fix=f"give the {what} this expects; is this the right file?")
        return path.read_text(encoding="utf-8-sig")
    except IsADirectoryError:
        raise error("is a directory", file=str(path), fix=f"give the {what} itself") from None
    except OSError as e:
        raise error(f"cannot read ({e.strerror or e})", file=str(path), fix="check the path") from None
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})", file=str(path),
                    fix=f"give the {what} as UTF-8 text") from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: an alias bomb is refused at its first ``*``."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported", mark)
        return super().compose_node(parent, index)


def parse_json(text: str, source: str, error: type[JigsawError]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"not valid JSON ({e.msg}, line {e.lineno})", file=source, fix="fix the syntax") from None
    except RecursionError:
        raise error("nested too deeply", file=source, fix="give the document this expects") from None


def parse_yaml(text: str, source: str, error: type[JigsawError]) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        detail = getattr(e, "problem", None) or type(e).__name__
        detail += f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise error(f"not valid YAML ({detail})", file=source,
                    fix="fix the syntax; write anchors' values out in full" if "alias" in detail else "fix the syntax"
                    ) from None
    except RecursionError:
        raise error("nested too deeply", file=source, fix="give the document this expects") from None


def read_document(path: Path, error: type[JigsawError], what: str = "file") -> Any:
    """A YAML or JSON file (JSON by a ``.json`` suffix), as plain data."""
    text = read_text(path, error, what)
    return parse_json(text, str(path), error) if path.suffix == ".json" else parse_yaml(text, str(path), error)
