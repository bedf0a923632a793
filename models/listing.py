"""``--list``: every variant and file, their sizes, what the destination already holds, and totals.

Sizes come from the manifest where it has them, else from a HEAD request to the hub (skipped with ``--offline``);
what is present is read from the verified-state records and ``stat`` only, so listing never hashes anything.
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

from . import hub, log, state
from .manifest import Manifest, ModelFile
from .options import Options

LIST_TIMEOUT_S = 10.0


def _remote_sizes(files: list[ModelFile], options: Options) -> dict[str, int | str]:
    """name -> size in bytes, or the reason it is unknown. One quick HEAD per file, no retries."""
    wanted = [f for f in files if f.size is None]
    if options.offline or not wanted:
        return {f.name: "not asked (--offline)" for f in wanted} if options.offline else {}

    def head(entry: ModelFile) -> int | str:
        try:
            size = hub.resolve(entry, options.endpoint, options.token, timeout=LIST_TIMEOUT_S).size
        except Exception as exc:  # noqa: BLE001 - listing reports, it does not fail
            try:
                return hub.classify(exc, entry, options.endpoint).error.what
            except Exception:  # noqa: BLE001
                return f"{type(exc).__name__}: {exc}"
        return size if size is not None else "the server sent no size"

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
        return dict(zip((f.name for f in wanted), pool.map(head, wanted), strict=True))


def _presence(entry: ModelFile, dest: Path | None) -> dict[str, Any]:
    if dest is None:
        return {"state": "no --dest"}
    target = dest / entry.relpath
    ok, reason = state.check(target, entry)
    if ok:
        record = state.read(target)
        return {"state": "verified", "verified_sha256": record.sha256 if record else None,
                "verified_commit": record.commit if record else None}
    if reason != "missing":
        return {"state": "present, unverified", "reason": reason}
    partials = sorted((dest / ".models" / "partial").glob(f"{entry.filename}.*.part"))
    if partials:
        return {"state": "partial", "partial_bytes": max(p.stat().st_size for p in partials)}
    return {"state": "missing"}


def collect(options: Options) -> dict[str, Any]:
    m: Manifest = options.manifest
    selected = set(m.expand(options.variants or m.default_variants))
    remote = _remote_sizes(list(m.files), options)
    files: list[dict[str, Any]] = []
    for f in m.files:
        size: int | None = f.size
        source = "manifest" if f.size is not None else "hub"
        if size is None:
            found = remote.get(f.name)
            size = found if isinstance(found, int) else None
            source = "hub" if size is not None else str(found)
        files.append({
            "name": f.name, "variants": list(f.variants), "selected": bool(selected.intersection(f.variants)),
            "status": f.status, "location": f.location, "origin": f.origin, "repo": f.repo,
            "revision": f.revision if f.on_hub else None,
            "path": f.path, "url": f.url, "dest": str(f.relpath), "size": size, "size_source": source,
            "sha256": f.sha256, **_presence(f, options.dest),
        })
    by_name = {row["name"]: row for row in files}

    def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
        known = [r for r in rows if r["size"] is not None]
        present = [r for r in rows if r["state"] == "verified"]
        todo = [r for r in rows if r["state"] != "verified"]
        return {
            "files": len(rows), "bytes": sum(r["size"] for r in known), "sizes_unknown": len(rows) - len(known),
            "verified_files": len(present), "verified_bytes": sum(r["size"] or 0 for r in present),
            "to_download_bytes": sum(max(0, (r["size"] or 0) - r.get("partial_bytes", 0)) for r in todo),
        }

    variants = {}
    for name, v in m.variants.items():
        members = set(m.expand([name], str(m.path)))
        rows = [by_name[f.name] for f in m.files if members.intersection(f.variants)]
        variants[name] = {"description": v.description, "default": v.default, "includes": list(v.includes),
                          "selected": name in selected, **total(rows)}
    return {
        "manifest": str(m.path), "dest": str(options.dest) if options.dest else None, "endpoint": options.endpoint,
        "selected_variants": [n for n in m.variants if n in selected], "variants": variants, "files": files,
        "totals": total([r for r in files if r["selected"]]),
    }


def _size(row: dict[str, Any]) -> str:
    return log.fmt_bytes(row["size"]) if row["size"] is not None else "?"


def _state(row: dict[str, Any]) -> str:
    if row["state"] == "partial" and row["size"]:
        return f"partial {100 * row['partial_bytes'] // row['size']}%"
    if row["state"] == "present, unverified":
        return f"present, unverified ({row['reason']})"
    return str(row["state"])


def render(data: dict[str, Any]) -> str:
    lines = [f"Manifest {data['manifest']}   (* default variant, > selected)", "", "Variants:"]
    for name, v in data["variants"].items():
        mark = ("*" if v["default"] else " ") + (">" if v["selected"] else " ")
        size = log.fmt_bytes(v["bytes"]) + ("+?" if v["sizes_unknown"] else "")
        if v["sizes_unknown"] == v["files"]:
            size = "?"
        inc = f"  (+ {', '.join(v['includes'])})" if v["includes"] else ""
        lines.append(f"  {mark} {name:<15} {v['files']:>2} files {size:>11}  {v['description']}{inc}")
    lines += ["", f"Files ({'at ' + data['dest'] if data['dest'] else 'no --dest given'}):"]
    width = max(len(r["name"]) for r in data["files"])
    unknown_reasons = {r["size_source"] for r in data["files"] if r["size"] is None}
    for r in data["files"]:
        mark = ">" if r["selected"] else " "
        status = f"{r['status']}/{r['location'] or '-'}"
        lines.append(f"  {mark} {r['name']:<{width}} {_size(r):>10}  {status:<21} {_state(r):<8}  "
                     f"[{', '.join(r['variants'])}]")
        lines.append(f"      {r['dest']}  <-  {r['origin']}")
    t = data["totals"]
    unknown = f", {t['sizes_unknown']} size(s) unknown" if t["sizes_unknown"] else ""
    lines += ["", f"Selected ({', '.join(data['selected_variants'])}): {t['files']} files, "
              f"{log.fmt_bytes(t['bytes'])}{unknown}; verified at dest: {t['verified_files']} "
              f"({log.fmt_bytes(t['verified_bytes'])}); to download: {log.fmt_bytes(t['to_download_bytes'])}"
              + (" + unknown sizes" if t["sizes_unknown"] else "")]
    if unknown_reasons:
        lines.append("Sizes marked ? are unknown: " + "; ".join(sorted(unknown_reasons)))
    lines.append("Status: verified = commit and sha256 pinned in the manifest; location: confirmed by public "
                 "sources / inferred. Unpinned files are checked against the hub's LFS sha256 when downloaded.")
    return "\n".join(lines)


def show(options: Options) -> str:
    data = collect(options)
    return json.dumps(data, indent=2) if options.as_json else render(data)
