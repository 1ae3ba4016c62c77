"""Readers: each turns one collection layout into raw manifest rows (a :class:`Collection`)."""

from __future__ import annotations

from collections.abc import Callable

from cxrgen.data.readers.base import Collection
from cxrgen.data.readers.covid import read_covid
from cxrgen.data.readers.generic import read_csv_collection
from cxrgen.data.readers.iu import read_iu
from cxrgen.data.readers.mimic import read_mimic
from cxrgen.data.readers.pediatric import read_pediatric
from cxrgen.data.readers.twin import read_twin

#: Source name -> reader; every reader takes (path, cfg, summary, **options).
READERS: dict[str, Callable[..., Collection]] = {
    "mimic": read_mimic,
    "csv": read_csv_collection,
    "covid": read_covid,
    "pediatric": read_pediatric,
    "iu": read_iu,
    "twin": read_twin,
}

__all__ = ["READERS", "Collection"]
