"""``manifest.json``: what a folder holds and how it was made.

The header names the format version, the model and its digest, every option that changes the
numbers, the sources and the row count; ``parts`` has one entry per complete part (rows, status
counts, the files, seconds spent reading / in inference / writing); ``totals`` sums them.

Committing a part: its files are written first, then its entry ``manifest.d/part-NNNNN.json``
(atomically), then ``manifest.json`` is assembled again from the header and the entries. A part
without an entry does not count, whatever files it left: a rerun writes it again. With several
ranks each commits its own parts' entries, so no two processes write the same file but
``manifest.json`` (atomically, from the same entries).
"""

from __future__ import annotations

import json
from typing import Any

from openradio.extract.writers import (
    FORMAT,  # noqa: F401  (re-exported: the header's "format", defined with its reader)
    Store,
    load_manifest,
    part_name,
)

# header fields whose change makes an existing folder a different data set
IDENTITY = ("format", "layout", "options", "model", "sources", "rows", "rows_digest", "part_size")


class ManifestMismatch(ValueError):
    pass


def _describe(a: Any, b: Any, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _describe(a.get(k), b.get(k), f"{where}.{k}" if where else k)
            if d:
                return d
        return None
    if a != b:
        short = lambda v: (json.dumps(v)[:60] + "...") if len(json.dumps(v)) > 63 else json.dumps(v)
        return f"{where} was {short(a)}, this run has {short(b)}"
    return None


def check_same(existing: dict, header: dict, url: str) -> None:
    for k in IDENTITY:
        d = _describe(existing.get(k), header.get(k), k)
        if d:
            raise ManifestMismatch(
                f"{url} was made differently ({d}): pass --overwrite to replace it, or choose another --out"
            )


def read(store: Store) -> dict | None:
    """The manifest of an output folder, None when there is none (a new folder); one
    :class:`ManifestMismatch` line when it is not JSON."""
    try:
        return load_manifest(store)
    except ValueError as e:
        raise ManifestMismatch(f"{e}; pass --overwrite") from None


def entries(store: Store) -> dict[str, dict]:
    """The committed parts: ``{"00003": entry}`` (entries whose part files all exist)."""
    out = {}
    for name in store.listdir("manifest.d"):
        if not (name.startswith("part-") and name.endswith(".json")):
            continue
        try:
            e = json.loads(store.read_bytes(f"manifest.d/{name}"))
        except (json.JSONDecodeError, OSError):
            continue
        if all(store.exists(f) for f in e.get("files", [])):
            out[name[5:-5]] = e
    return out


def commit_part(store: Store, k: int, entry: dict) -> None:
    store.write_bytes(f"manifest.d/{part_name(k)}.json", json.dumps(entry, sort_keys=True).encode())


def totals(parts: dict[str, dict]) -> dict:
    skipped: dict[str, int] = {}
    secs = {"read": 0.0, "inference": 0.0, "write": 0.0}
    for e in parts.values():
        for reason, n in e["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
        for k in secs:
            secs[k] += e["seconds"][k]
    return {
        "rows": sum(e["rows"] for e in parts.values()),
        "ok": sum(e["ok"] for e in parts.values()),
        "skipped": dict(sorted(skipped.items())),
        "seconds": {k: round(v, 3) for k, v in secs.items()},
    }


def write(store: Store, header: dict, extra: dict | None = None) -> dict:
    parts = entries(store)
    doc = {
        **header,
        "parts": dict(sorted(parts.items())),
        "totals": totals(parts),
        "complete": len(parts) == header["num_parts"],
        **(extra or {}),
    }
    store.write_bytes("manifest.json", json.dumps(doc, indent=1, sort_keys=True).encode(), point="manifest")
    return doc
