"""Loading pretrained parts by hub id or local path, the way users with internet do."""

from __future__ import annotations

from typing import Any

from cxrgen.errors import ConfigError


def load_pretrained(cls: Any, source: str, subfolder: str | None, what: str, hint: str) -> Any:
    """``cls.from_pretrained(source, subfolder)`` with safetensors only; failures say what to do."""
    try:
        return cls.from_pretrained(source, subfolder=subfolder, use_safetensors=True)
    except (OSError, ValueError) as exc:
        where = f"{source!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise ConfigError(f"cannot load {what} from {where}: {exc}. {hint}") from exc
