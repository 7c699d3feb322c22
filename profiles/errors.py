"""The one exception hierarchy. The CLI turns any ``JigsawError`` into one line and exit status 2."""

from __future__ import annotations

from pathlib import Path


class JigsawError(Exception):
    """A problem with something the user gave us: names the file, the field and the fix."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} (fix: {self.fix})" if self.fix else text


class CatalogError(JigsawError):
    """A malformed or inconsistent catalog, app spec or profile table."""


class PlanError(JigsawError):
    """A plan that does not fit the catalog or cannot be read."""


class SolverError(JigsawError):
    """A solver request that cannot be posed (unknown app, bad demand, bad options)."""


class TraceError(JigsawError):
    """A malformed trace file or an impossible trace request; ``line`` is the 1-based line in ``file``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.line = line
        super().__init__(message, file=f"{file}:{line}" if file and line else file, field=field, fix=fix)


class ShimError(JigsawError):
    """A serving request that cannot be met here: a backend this machine lacks, a port in use, a bad option."""


class ProfilerError(JigsawError):
    """A profiling request that cannot run (bad family, batches or shares, no such device, unwritable output)."""


class ConfigError(JigsawError):
    """A malformed configuration (environment, training hyperparameters, daemon settings)."""


class OutputError(JigsawError):
    """A directory or file we were asked to write cannot be written (e.g. an evaluation's log directory)."""


def ensure_writable_dir(directory: Path, field: str) -> None:
    """Create ``directory`` and make sure files can be written there: before a long run, not after it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write there ({e.strerror or e})", file=str(directory), field=field,
                          fix="give a writable directory") from None


def write_text(path: Path, text: str, field: str) -> None:
    """Write ``text`` to ``path`` whole (a temporary file beside it, renamed): a crash never leaves half of it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise OutputError(f"cannot write ({e.strerror or e})", file=str(path), field=field,
                          fix="give a writable file name") from None
