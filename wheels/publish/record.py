"""``<wheelhouse>/published.json``: what was published where, when, and whether it was proven. Never credentials.

    {"schema": 1,
     "destinations": {
       "<key>": {"kind": "embedded|upload|static", "upload_url": ..., "index_url": ..., "last_run": ...,
                 "wheels": {"<filename>": {"target", "sha256", "published_at", "verified_at", "action"}}}}}

The key is stable for a destination: the embedded index's data folder (its port changes every run), the static
folder, or the upload URL without credentials. Written atomically, under the wheelhouse lock.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..manifest import Wheelhouse
from ..util import atomic_write_json
from .credentials import mask_url, strip_userinfo

FILE = "published.json"
SCHEMA = 1


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def destination_key(kind: str, where: str) -> str:
    if kind == "upload":
        return "upload:" + strip_userinfo(where)[0]
    return f"{kind}:{where}"


def read(wheelhouse: Path) -> dict[str, Any]:
    path = wheelhouse / FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"schema": SCHEMA, "destinations": {}}
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})", fix="delete it; the next publish rewrites it") from None
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"{path} has schema {data.get('schema')!r}; this pipeline reads {SCHEMA}")
    return data


def update(
    wheelhouse: Path,
    *,
    kind: str,
    where: str,
    upload_url: str | None,
    index_url: str,
    wheels: dict[str, dict[str, Any]],
) -> Path:
    """Merge one run's outcome for one destination. ``wheels``: filename -> fields to set."""
    house = Wheelhouse(wheelhouse)
    with house.locked():
        data = read(wheelhouse)
        dest = data["destinations"].setdefault(destination_key(kind, where), {"wheels": {}})
        dest.update(
            kind=kind,
            upload_url=mask_url(strip_userinfo(upload_url)[0]) if upload_url else None,
            index_url=mask_url(strip_userinfo(index_url)[0]),
            last_run=now(),
        )
        for filename, fields in wheels.items():
            dest["wheels"].setdefault(filename, {}).update(fields)
        path = wheelhouse / FILE
        atomic_write_json(path, data)
    return path
