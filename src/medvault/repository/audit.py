"""The audit trail: sealed, hash-chained records under `audit/<chain>/<seq>`.

Each writing host appends to a chain of its own (its id derived from the repository id and the
host name, so no local state is needed to find it); hosts never wait for each other. A record
is sealed like every named record (AEAD, bound to its kind and object name) and carries a MAC
under a key derived from the master key, over its canonical JSON with its chain, sequence
number and the MAC of the record before it. So an edited record fails to open, a record
deleted from the middle leaves a gap, and a record moved, copied or swapped to another name
fails to open there (and its MAC names its true place).

What a chain alone cannot show: a tail cut off. Without an anchor (a head this host cached,
a head a later snapshot names), a chain truncated after record n is indistinguishable from a
chain that only ever had n records; `verify(expected_heads=...)` checks against the anchors it
is given (docs/format.md §19).

Nothing deletes audit records: repository/deletion.py has no function for them, and prune
never lists audit/.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import blake3

from medvault.errors import IntegrityError, ObjectExists, ObjectNotFound, RepositoryLocked
from medvault.repository.crypto import (
    KEY_BLOCK_LEN,
    OBJECT_NONCE,
    record_aad,
    unwrap_content_key,
)
from medvault.repository.records import AuditHead

if TYPE_CHECKING:
    from medvault.repository.repo import Repository

FOLDER = "audit"
KIND_AUDIT = b"medvault audit"
# Chains copied from a repository with other keys (`medvault copy`, re-encrypted): the MAC
# key of each, sealed under this repository's keys, so its records verify here unchanged.
KEYS_FOLDER = "audit-keys"
KIND_AUDIT_KEY = b"medvault audit key"
FORMAT = 1
SEQ_DIGITS = 16
KINDS = ("run", "wal-push-count", "run-ended-elsewhere")
CHAIN_CONTEXT = "medvault 2026 audit chain"
MAC_CONTEXT = "medvault 2026 audit mac"
# Appends of one host racing each other: each loser reads the head again and retries.
APPEND_ATTEMPTS = 64
# Records that fail to open are tried under every other name to tell a copy from an edit.
EXPLAIN_LIMIT = 20
# Records read by one task of the reading threads (see _load_all).
BATCH = 64
_NAME = re.compile(r"audit/([0-9a-f]{16})/([0-9]{16})")


def chain_id(repo_id: str, host: str) -> str:
    """The chain a host appends to in a repository: the same on every run, for every process
    of that host, with no state kept anywhere."""
    material = f"{repo_id}\0{host}".encode()
    return blake3.blake3(material, derive_key_context=CHAIN_CONTEXT).hexdigest()[:16]


def record_name(chain: str, seq: int) -> str:
    return f"{FOLDER}/{chain}/{seq:0{SEQ_DIGITS}d}"


def parse_name(name: str) -> tuple[str, int] | None:
    match = _NAME.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else None


def canonical(doc: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the MAC covers, the same for every writer."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def audit_mac_key(mac_key: bytes) -> bytes:
    """A key of its own for audit MACs, derived from the master key's MAC key."""
    return blake3.blake3(mac_key, derive_key_context=MAC_CONTEXT).digest()


class AuditEntry(NamedTuple):
    """One audit record as stored: its place (chain, seq), the MAC of the record before it,
    what it records, and its own MAC."""

    chain: str
    seq: int
    prev: str  # the MAC of record seq-1 of the chain; "" for record 0
    kind: str  # "run", "wal-push-count", "run-ended-elsewhere"
    record: dict[str, Any]
    mac: str

    @property
    def name(self) -> str:
        return record_name(self.chain, self.seq)

    def body(self) -> dict[str, Any]:
        """What the MAC covers: everything but the MAC."""
        return {
            "v": FORMAT,
            "chain": self.chain,
            "seq": self.seq,
            "prev": self.prev,
            "kind": self.kind,
            "record": self.record,
        }


class Head(NamedTuple):
    seq: int  # -1: the chain is empty
    mac: str


EMPTY = Head(-1, "")


class ChainSummary(NamedTuple):
    chain: str
    records: int  # records that verified
    head: int  # the highest sequence number present (-1: none)
    head_mac: str  # its MAC ("" when it did not verify)
    hosts: tuple[str, ...]  # the hosts its records name


class AuditReport(NamedTuple):
    """(NamedTuples, not dataclasses, here: this module is imported by the run that seals a
    record, and a dataclass costs a millisecond to define.)"""

    chains: tuple[ChainSummary, ...] = ()
    problems: tuple[str, ...] = ()  # one line each, naming the object and what is wrong
    records: int = 0  # records that verified, in every chain
    # Chains that were checked against an anchor (a head that must be present).
    anchored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """The audit chains of one repository. `host`: the writer (its chain is where `append`
    goes); `retention`: how long each record stays undeletable on a store with Object Lock
    (the audit retention; None: the repository's own period); `state_dir`: where this host
    caches the head of its chain, so that an append is one PUT."""

    def __init__(
        self,
        repo: Repository,
        host: str | None = None,
        *,
        retention: dt.timedelta | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.repo = repo
        self.host = host if host is not None else os.uname().nodename
        self.retention = retention
        self.state_dir = state_dir
        self._key = audit_mac_key(repo.master.mac_key)
        self._explained = 0  # records verify tried under other names
        self._chain_keys: dict[str, bytes] | None = None  # copied chains' keys, when read
        self._chain: tuple[str, str] | None = None  # (host, its chain id), computed once

    # -- names and MACs ----------------------------------------------------------------------

    @property
    def chain(self) -> str:
        if self._chain is None or self._chain[0] != self.host:
            self._chain = (self.host, chain_id(self.repo.config.repo_id, self.host))
        return self._chain[1]

    def mac(self, body: Mapping[str, Any]) -> str:
        key = self._key
        if body.get("chain") != self.chain:
            key = self.key_for(str(body.get("chain")))
        return blake3.blake3(canonical(body), key=key, max_threads=1).hexdigest()

    def key_for(self, chain: str) -> bytes:
        """The MAC key of a chain: this repository's, or the one a re-encrypted copy brought
        along for a chain it copied (an `audit-keys/<chain>` record)."""
        if self._chain_keys is None:
            self._chain_keys = self._load_chain_keys()
        return self._chain_keys.get(chain, self._key)

    def _load_chain_keys(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for name in self.repo.list_records(KEYS_FOLDER):
            chain = name.rsplit("/", 1)[-1]
            try:
                doc = json.loads(self.repo.load_record(name, KIND_AUDIT_KEY))
                key = bytes.fromhex(doc["key"])
            except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError) as exc:
                self.repo.warnings.append(f"audit key record {name} is unusable: {exc}")
                continue
            if len(key) == 32 and doc.get("chain") == chain:
                found[chain] = key
        return found

    def carry_key(self, chain: str, key: bytes, repo_id: str) -> None:
        """Keep the MAC key of a chain copied from repository `repo_id` (store-if-absent: a
        key once carried is never replaced)."""
        payload = canonical({"chain": chain, "key": key.hex(), "repository": repo_id})
        try:
            self.repo.store_record(
                f"{KEYS_FOLDER}/{chain}", payload, KIND_AUDIT_KEY, retention=self.retention
            )
        except ObjectExists:
            return
        if self._chain_keys is not None:
            self._chain_keys[chain] = key

    # -- appending ---------------------------------------------------------------------------

    def append(self, kind: str, record: Mapping[str, Any]) -> AuditEntry:
        """Seal `record` as the next record of this host's chain. Another process of this
        host appending at the same moment takes the name first: then the head is read again
        and the next name tried (store-if-absent, so none is ever overwritten)."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit record kind {kind!r}")
        chain = self.chain
        plain = json.loads(canonical(record))  # JSON values only, as a reader will see them
        head = self._cached_head(chain)
        for attempt in range(APPEND_ATTEMPTS):
            if head is None:
                head = self.head(chain)
            body = AuditEntry(chain, head.seq + 1, head.mac, kind, plain, "").body()
            entry = AuditEntry(chain, head.seq + 1, head.mac, kind, plain, self.mac(body))
            try:
                self.repo.store_record(
                    entry.name,
                    canonical({**body, "mac": entry.mac}),
                    KIND_AUDIT,
                    retention=self.retention,
                )
            except ObjectExists:
                head = None
                # A little jitter, so that racing processes do not collide again in step.
                time.sleep(os.urandom(1)[0] / 255 * 0.005 * min(attempt + 1, 10))
                continue
            self._cache_head(chain, Head(entry.seq, entry.mac))
            return entry
        raise RepositoryLocked(
            f"could not append to audit chain {chain}: {APPEND_ATTEMPTS} other appends of "
            "this host came first"
        )

    def current_head(self) -> AuditHead:
        """The head of this host's chain, as a snapshot names it (the cached head when this
        host keeps one: no round trip; else listed)."""
        chain = self.chain
        head = self._cached_head(chain) or self.head(chain)
        return AuditHead(chain, head.seq, head.mac)

    def head(self, chain: str) -> Head:
        """The last record of a chain as the store holds it (listed, then read)."""
        seqs = sorted(self._seqs(chain))
        if not seqs:
            return EMPTY
        top = seqs[-1]
        try:
            return Head(top, self.load(chain, top).mac)
        except (IntegrityError, ObjectNotFound):
            # A damaged head: chain on regardless (verify reports the damage and the break);
            # an operation's record must not be lost to it.
            return Head(top, "")

    def recorded(self, chain: str, run_id: str, *, since: str) -> bool:
        """Whether a record of run `run_id` is in `chain`, read from the newest record back
        to the first that ended before `since` (an ISO time: when the run began)."""
        for seq in sorted(self._seqs(chain), reverse=True):
            try:
                entry = self.load(chain, seq)
            except (IntegrityError, ObjectNotFound):
                continue
            if entry.record.get("run_id") == run_id:
                return True
            if str(entry.record.get("ended") or "") < since:
                return False
        return False

    def _seqs(self, chain: str) -> list[int]:
        found = []
        for name in self.repo.list_records(f"{FOLDER}/{chain}"):
            parsed = parse_name(name)
            if parsed is not None and parsed[0] == chain:
                found.append(parsed[1])
        return found

    # -- the head cache (state dir) ----------------------------------------------------------

    def _cache_path(self, chain: str) -> Path | None:
        if self.state_dir is None:
            return None
        return self.state_dir / "audit-heads" / f"{self.repo.config.repo_id}-{chain}"

    def _cached_head(self, chain: str) -> Head | None:
        path = self._cache_path(chain)
        if path is None:
            return None
        try:
            seq, mac = path.read_text(encoding="ascii").split()
            return Head(int(seq), mac)
        except (OSError, ValueError):
            return None

    def _cache_head(self, chain: str, head: Head) -> None:
        path = self._cache_path(chain)
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(f"{head.seq} {head.mac}\n", encoding="ascii")
            os.replace(tmp, path)
        except OSError:
            pass  # a cache: the next append lists the chain instead

    def cached_heads(self) -> dict[str, Head]:
        """The heads this host has written, per chain of this repository: anchors that the
        store must still hold (a tail cut off below one of them is truncation)."""
        if self.state_dir is None:
            return {}
        found = {}
        prefix = f"{self.repo.config.repo_id}-"
        try:
            paths = list((self.state_dir / "audit-heads").iterdir())
        except OSError:
            return {}
        for path in paths:
            if path.name.startswith(prefix):
                head = self._cached_head(path.name[len(prefix) :])
                if head is not None:
                    found[path.name[len(prefix) :]] = head
        return found

    # -- reading -----------------------------------------------------------------------------

    def chains(self) -> list[str]:
        """Every chain present, in name order."""
        return sorted({p[0] for p in self._names()})

    def heads(self) -> dict[str, Head]:
        """The last record of every chain, as the store holds it."""
        return {chain: self.head(chain) for chain in self.chains()}

    def _names(self, chain: str | None = None) -> list[tuple[str, int]]:
        folder = f"{FOLDER}/{chain}" if chain is not None else FOLDER
        parsed = (parse_name(name) for name in self.repo.list_records(folder))
        return sorted(p for p in parsed if p is not None and (chain is None or p[0] == chain))

    def load(self, chain: str, seq: int) -> AuditEntry:
        """One record, opened under its name and its MAC checked (IntegrityError if not)."""
        name = record_name(chain, seq)
        return self.decode(name, self.repo.load_record(name, KIND_AUDIT))

    def decode(self, name: str, plaintext: bytes) -> AuditEntry:
        """A record's plaintext, checked: its fields, its place against its name, its MAC."""
        try:
            doc = json.loads(plaintext)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{name} is not an audit record") from exc
        entry = _entry_of(doc)
        if entry is None:
            raise IntegrityError(f"{name} is not an audit record (fields missing or wrong)")
        if not self._mac_holds(entry, plaintext):
            raise IntegrityError(f"{name} fails its MAC: forged, or edited before sealing")
        if entry.name != name:
            raise IntegrityError(
                f"{name} holds record {entry.seq} of chain {entry.chain}: moved or copied here"
            )
        return entry

    def _mac_holds(self, entry: AuditEntry, plaintext: bytes) -> bool:
        """Whether the record's MAC holds. The bytes a MAC covers are the canonical JSON
        without "mac"; `append` stores the canonical JSON with it, where "mac" sits at the
        top level right after "chain" and "kind" (keys sorted). So the covered bytes are
        the stored ones without that field: no encoding again (a third of verify's time).
        Anything else (a record stored in another form) is encoded again and checked."""
        if entry.kind in KINDS and entry.chain.isalnum():
            prefix = f'{{"chain":"{entry.chain}","kind":"{entry.kind}"'.encode()
            field = f',"mac":"{entry.mac}"'.encode()
            if plaintext.startswith(prefix) and plaintext.startswith(field, len(prefix)):
                covered = prefix + plaintext[len(prefix) + len(field) :]
                key = self._key if entry.chain == self.chain else self.key_for(entry.chain)
                digest = blake3.blake3(covered, key=key, max_threads=1).hexdigest()
                if hmac.compare_digest(entry.mac, digest):
                    return True
        return hmac.compare_digest(entry.mac, self.mac(entry.body()))

    def entries(
        self, chain: str | None = None, after_seq: int | None = None
    ) -> Iterator[AuditEntry]:
        """Records that verify, chain by chain, in order of sequence number (from after
        `after_seq` when given: catching up from a known head). Damaged ones are left out
        with a warning on the repository (verify names them)."""
        names = [(c, s) for c, s in self._names(chain) if after_seq is None or s > after_seq]
        for (c, s), entry in zip(names, self._load_all(names), strict=True):
            if isinstance(entry, AuditEntry):
                yield entry
            else:
                self.repo.warnings.append(
                    f"audit record {record_name(c, s)} is left out: {entry}; run "
                    "`medvault audit verify`"
                )

    def _load_all(self, names: list[tuple[str, int]]) -> Iterator[AuditEntry | str]:
        """Each record loaded and checked, in order, several at a time (a remote store's
        round trips overlap); a failure as its message."""

        def one(place: tuple[str, int]) -> AuditEntry | str:
            try:
                return self.load(*place)
            except (IntegrityError, ObjectNotFound) as exc:
                return str(exc)

        def batch(places: list[tuple[str, int]]) -> list[AuditEntry | str]:
            return [one(place) for place in places]

        if any(chain != self.chain for chain, _ in names):
            self.key_for("")  # copied chains' keys read once, before the threads need them
        workers = max(1, min(self.repo.concurrency, 16))
        if workers == 1 or len(names) < 8:
            yield from map(one, names)
            return
        from concurrent.futures import ThreadPoolExecutor

        # Batches, not one task per record: a task's hand-over costs as much as a local read.
        size = max(1, min(BATCH, len(names) // (workers * 4) or 1))
        batches = [names[i : i + size] for i in range(0, len(names), size)]
        with ThreadPoolExecutor(workers, "medvault-audit") as pool:
            for done in pool.map(batch, batches):
                yield from done

    # -- verifying ---------------------------------------------------------------------------

    def verify(
        self,
        expected_heads: Mapping[str, int | Head] | None = None,
        *,
        collect: list[AuditEntry] | None = None,
    ) -> AuditReport:
        """Every chain, record by record: each opens under its own name (an edited record
        fails here; one moved, copied or swapped in from another name too, and is named as
        such), its MAC holds, its `prev` is the MAC of the record before, and no sequence
        number is missing from 0 to the head. `expected_heads` (chain -> a sequence number,
        or a Head with its MAC): anchors from outside the chain; a chain that ends before
        one, or holds another record there, was truncated or rewritten. Without an anchor a
        truncated tail cannot be told from a chain that was always that short. `collect`:
        receives every record that verified, chain by chain in order (read once, for a
        caller that needs them too)."""
        anchors = dict(expected_heads or {})
        self._explained = 0
        listed = self.repo.list_records(FOLDER)
        problems = [
            f"{name} is not an audit record name (planted or damaged)"
            for name in listed
            if parse_name(name) is None
        ]
        by_chain: dict[str, list[int]] = {}
        for chain, seq in sorted(p for p in map(parse_name, listed) if p is not None):
            by_chain.setdefault(chain, []).append(seq)
        all_names = [record_name(c, s) for c, seqs in by_chain.items() for s in seqs]
        summaries = []
        for chain in sorted(set(by_chain) | set(anchors)):
            summary, chain_problems = self._verify_chain(
                chain, by_chain.get(chain, []), anchors.get(chain), all_names, collect
            )
            summaries.append(summary)
            problems += chain_problems
        return AuditReport(
            chains=tuple(summaries),
            problems=tuple(problems),
            records=sum(s.records for s in summaries),
            anchored=tuple(sorted(anchors)),
        )

    def _verify_chain(
        self,
        chain: str,
        seqs: list[int],
        anchor: int | Head | None,
        all_names: list[str],
        collect: list[AuditEntry] | None = None,
    ) -> tuple[ChainSummary, list[str]]:
        problems: list[str] = []
        loaded = dict(zip(seqs, self._load_all([(chain, s) for s in seqs]), strict=True))
        good = {s: e for s, e in loaded.items() if isinstance(e, AuditEntry)}
        if collect is not None:
            collect.extend(good.values())
        expected = 0
        for seq in seqs:
            if seq > expected:
                problems.append(_gap(chain, expected, seq - 1))
            expected = seq + 1
            entry = loaded[seq]
            if not isinstance(entry, AuditEntry):
                problems.append(self._why_unreadable(record_name(chain, seq), entry, all_names))
                continue
            if seq == 0 and entry.prev != "":
                problems.append(f"audit record {entry.name} is first but names a predecessor")
            before = good.get(seq - 1)
            if before is not None and not hmac.compare_digest(entry.prev, before.mac):
                problems.append(
                    f"audit record {entry.name} does not follow {before.name} (its prev MAC "
                    "differs): the chain was rewritten"
                )
        top = seqs[-1] if seqs else -1
        if anchor is not None:
            want = anchor if isinstance(anchor, Head) else Head(int(anchor), "")
            if top < want.seq:
                problems.append(
                    f"audit chain {chain} ends at record {top} but record {want.seq} was "
                    f"written: records {top + 1}..{want.seq} were cut off (truncated)"
                )
            elif want.mac and want.seq in good and good[want.seq].mac != want.mac:
                problems.append(
                    f"audit record {record_name(chain, want.seq)} is not the record anchored "
                    "there: the chain was rewritten"
                )
        head_entry = good.get(top)
        hosts = sorted({str(e.record["host"]) for e in good.values() if e.record.get("host")})
        summary = ChainSummary(
            chain=chain,
            records=len(good),
            head=top,
            head_mac=head_entry.mac if head_entry is not None else "",
            hosts=tuple(hosts),
        )
        return summary, problems

    def _why_unreadable(self, name: str, reason: str, all_names: list[str]) -> str:
        """One line for a record that does not verify: a copy of another record (moved,
        copied or swapped there) when it opens under another name, else edited or damaged.
        Trying other names costs one decryption per name: done for the first few only."""
        if "does not open under its name" not in reason:
            return f"audit record {name}: {reason}"
        self._explained += 1
        origin = self._origin(name, all_names) if self._explained <= EXPLAIN_LIMIT else None
        if origin is not None:
            return (
                f"audit record {name} holds the record of {origin}: moved, copied or "
                "reordered there"
            )
        return f"audit record {name} fails authentication: edited, damaged or planted"

    def _origin(self, name: str, all_names: list[str]) -> str | None:
        """The other name a sealed record opens under, if any."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            data = self.repo.load_record_bytes(name)
            cipher = AESGCM(unwrap_content_key(self.repo.master.keks, data[:KEY_BLOCK_LEN]))
        except (ObjectNotFound, IntegrityError):
            return None
        for other in all_names:
            if other == name:
                continue
            try:
                cipher.decrypt(OBJECT_NONCE, data[KEY_BLOCK_LEN:], record_aad(KIND_AUDIT, other))
            except InvalidTag:
                continue
            return other
        return None


def _gap(chain: str, first: int, last: int) -> str:
    which = f"record {first}" if first == last else f"records {first}..{last}"
    return f"audit chain {chain}: {which} missing (deleted from the middle of the chain)"


def _entry_of(doc: object) -> AuditEntry | None:
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        return None
    chain, seq, prev, kind = doc.get("chain"), doc.get("seq"), doc.get("prev"), doc.get("kind")
    record, mac = doc.get("record"), doc.get("mac")
    if not (
        isinstance(chain, str)
        and isinstance(seq, int)
        and not isinstance(seq, bool)
        and isinstance(prev, str)
        and isinstance(kind, str)
        and isinstance(record, dict)
        and isinstance(mac, str)
        and mac.isascii()
        and prev.isascii()
    ):
        return None
    return AuditEntry(chain, seq, prev, kind, record, mac)
