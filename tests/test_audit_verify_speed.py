"""`AuditLog.decode` checks a MAC on the stored bytes when they are the canonical form
`append` writes (no encoding again), and falls back to encoding the record again otherwise:
both ways accept exactly the records whose MAC holds."""

from __future__ import annotations

import json

from medvault.errors import IntegrityError
from medvault.repository.audit import KIND_AUDIT, AuditEntry, AuditLog, canonical
from medvault.repository.repo import Repository


def test_a_record_stored_in_another_form_still_verifies_and_an_edit_still_fails(
    repo: Repository,
) -> None:
    log = AuditLog(repo, "ward-1")
    entry = log.append("run", {"operation": "backup", "status": "ok", "host": "ward-1"})
    body = entry.body()
    # The same record, MAC included, as another writer might store it (spaces, other order).
    loose = json.dumps({"mac": entry.mac, **body}, indent=1).encode()
    assert log.decode(entry.name, loose) == entry
    # An edit after the MAC field (in the part the fast path hashes as stored) fails...
    edited = canonical({**body, "mac": entry.mac}).replace(b'"ok"', b'"no"')
    assert not _opens(log, entry.name, edited)
    # ...and so does one in the loose form, and a MAC moved before "kind".
    assert not _opens(log, entry.name, loose.replace(b'"ok"', b'"no"'))
    moved = b'{"mac":"%s",' % entry.mac.encode() + canonical(body)[1:]
    assert log.decode(entry.name, moved) == entry  # the same record: the MAC holds
    stored = repo.load_record(entry.name, KIND_AUDIT)
    assert stored == canonical({**body, "mac": entry.mac})
    assert isinstance(log.load(entry.chain, entry.seq), AuditEntry)


def _opens(log: AuditLog, name: str, plaintext: bytes) -> bool:
    try:
        log.decode(name, plaintext)
    except IntegrityError:
        return False
    return True
