"""Loading pretrained parts by hub id or local path, the way users with internet do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrgen.errors import ConfigError


def looks_local(source: str) -> bool:
    """True when ``source`` can only be a local path: absolute, relative (./, ../, ~), deeper than the
    hub's ``owner/name``, or under a folder that exists here (e.g. ``runs/ae``)."""
    path = Path(source).expanduser()
    parts = Path(source).parts
    return (path.is_absolute() or source.startswith((".", "~")) or len(parts) > 2
            or (len(parts) == 2 and Path(parts[0]).is_dir()))


def load_pretrained(cls: Any, source: str, subfolder: str | None, what: str, hint: str) -> Any:
    """``cls.from_pretrained(source, subfolder)`` with safetensors only; failures say what to do.

    A ``source`` that can only be a local path and does not exist fails at once (not after the
    hub client's retries).
    """
    source = str(source)
    if looks_local(source) and not Path(source).expanduser().exists():
        raise ConfigError(f"cannot load {what}: no folder {source!r} here. {hint}")
    try:
        return cls.from_pretrained(source, subfolder=subfolder, use_safetensors=True)
    except (OSError, ValueError) as exc:
        where = f"{source!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise ConfigError(f"cannot load {what} from {where}: {exc}. {hint}") from exc
