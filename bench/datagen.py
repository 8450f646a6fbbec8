"""Reproducible benchmark data: a hospital-like file tree, ~40% incompressible bytes, ~60% text.

Everything derives from one seed, so the same `--seed` and `--size-gib` give byte-identical
trees. Text is drawn from pools of generated lines (clinical notes, lab CSV, FHIR-like JSON,
HL7 messages, audit logs) so that it repeats the way real exports do and zstd shrinks it ~3-5x;
"imaging" and "scanned document" files are random bytes, which no compressor shrinks.

The 1% change used for incremental backups is also derived from the seed, applied in place
and undone afterwards, so every tool in every round backs up the same bytes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

GENERATOR_VERSION = 3
MiB = 1024 * 1024
GiB = 1024 * MiB
WRITE_BLOCK = 8 * MiB

RANDOM_SHARE = 0.40  # of all bytes: incompressible (imaging, scanned PDFs)
BIG_SHARE = 0.55  # of all bytes: in big files (50-200 MB at 2 GiB)
BIG_MIN, BIG_MAX = 50 * MiB, 200 * MiB
SMALL_MIN, SMALL_MAX = 4 * 1024, 1 * MiB
FILES_PER_DIR = 40
POOL_LINES = 40_000

# -- vocabulary ---------------------------------------------------------------------------

SURNAMES = [
    "Okafor",
    "Smith",
    "Jones",
    "Nguyen",
    "Patel",
    "Garcia",
    "Müller",
    "Rossi",
    "Kowalski",
    "Haddad",
    "Tanaka",
    "Silva",
    "Brown",
    "Dubois",
    "Novak",
    "Larsen",
    "Moreau",
    "Ivanova",
    "Cohen",
    "Ahmed",
    "Murphy",
    "O'Brien",
    "Fischer",
    "Schmidt",
    "Weber",
]
WARDS = [f"{n}{c}" for n in range(1, 9) for c in "ABC"] + ["ICU", "ED", "NICU", "HDU", "Theatre"]
DEPARTMENTS = [
    "cardiology",
    "oncology",
    "radiology",
    "emergency",
    "pediatrics",
    "neurology",
    "orthopedics",
    "nephrology",
    "pulmonology",
    "obstetrics",
    "gastroenterology",
    "dermatology",
]
SENTENCES = [
    "Pt seen on ward round.",
    "Patient reports mild pain at incision site.",
    "No nausea or vomiting overnight.",
    "Tolerating oral diet and fluids.",
    "Mobilising with physiotherapy, walked to end of corridor.",
    "Wound clean and dry, dressing changed.",
    "Chest clear on auscultation, no added sounds.",
    "Abdomen soft, non-tender, bowel sounds present.",
    "Alert and oriented to time, place and person.",
    "Family updated by telephone.",
    "Awaiting results of CT abdomen/pelvis.",
    "Discussed with consultant, agrees with plan.",
    "Plan: continue current management and review tomorrow.",
    "Plan: repeat bloods in the morning (FBC, U&E, CRP).",
    "Plan: step down to oral antibiotics if afebrile for 48h.",
    "Plan: refer to dietitian; encourage oral intake.",
    "Medications reconciled with GP list, no discrepancies.",
    "Allergies: penicillin (rash).",
    "Allergies: no known drug allergies.",
    "Safeguarding: no concerns identified.",
    "Discharge planning commenced; OT assessment booked.",
    "Pain controlled with regular paracetamol 1 g QDS.",
    "Commenced on enoxaparin 40 mg SC OD for VTE prophylaxis.",
    "Urine output adequate, catheter removed this morning.",
    "Blood glucose within target range, continue sliding scale.",
    "ECG: sinus rhythm, no acute ST changes.",
    "Sats maintained on room air.",
    "Febrile overnight to 38.2, cultures sent.",
]
LAB_TESTS = [
    ("718-7", "Hemoglobin", "g/dL", 12.0, 17.5),
    ("6690-2", "WBC", "10*3/uL", 4.0, 11.0),
    ("777-3", "Platelets", "10*3/uL", 150, 400),
    ("2951-2", "Sodium", "mmol/L", 135, 145),
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.1),
    ("2160-0", "Creatinine", "mg/dL", 0.6, 1.3),
    ("3094-0", "Urea nitrogen", "mg/dL", 7, 20),
    ("1988-5", "C reactive protein", "mg/L", 0, 5),
    ("2345-7", "Glucose", "mg/dL", 70, 99),
    ("1742-6", "ALT", "U/L", 7, 56),
]
VITALS = [
    ("8867-4", "Heart rate", "beats/min", 50, 120),
    ("9279-1", "Respiratory rate", "breaths/min", 10, 28),
    ("8310-5", "Body temperature", "Cel", 35.5, 39.5),
    ("59408-5", "Oxygen saturation", "%", 88, 100),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 90, 180),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 50, 110),
]
AUDIT_ACTIONS = [
    "VIEW_RECORD",
    "PRINT_LETTER",
    "UPDATE_MEDICATION",
    "ORDER_LAB",
    "SIGN_NOTE",
    "LOGIN",
    "LOGOUT",
    "EXPORT_PDF",
]


def _make_words(count: int) -> list[str]:
    """A pseudo-vocabulary for free text: real notes use thousands of distinct words."""
    r = random.Random(20240601)
    onsets = [
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "br",
        "cl",
        "dr",
        "gr",
        "pl",
        "st",
        "tr",
        "ch",
        "th",
    ]
    vowels = ["a", "e", "i", "o", "u", "ia", "io", "ea", "ou"]
    codas = ["", "", "n", "r", "s", "l", "t", "m", "x", "ct", "nd", "st"]
    words: set[str] = set()
    while len(words) < count:
        syllables = r.randint(1, 4)
        words.add(
            "".join(r.choice(onsets) + r.choice(vowels) + r.choice(codas) for _ in range(syllables))
        )
    return sorted(words)


WORDS = _make_words(6000)
WORD_CUM_WEIGHTS = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(WORDS))))


def _free_text(r: random.Random, low: int, high: int) -> str:
    return " ".join(r.choices(WORDS, cum_weights=WORD_CUM_WEIGHTS, k=r.randint(low, high)))


def _ts(r: random.Random) -> str:
    return (
        f"20{r.randint(18, 24)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T"
        f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"
    )


def _mrn(r: random.Random) -> str:
    return f"{r.randint(0, 99_999):09d}"  # a bounded population of patients recurs


def _note_line(r: random.Random) -> str:
    body = " ".join(r.sample(SENTENCES, r.randint(1, 3))) + " " + _free_text(r, 6, 30) + "."
    return (
        f"{_ts(r)} | MRN {_mrn(r)} | Ward {r.choice(WARDS)} | "
        f"Dr. {r.choice('ABCDEFGHJKLMNPRST')}. {r.choice(SURNAMES)} | "
        f"BP {r.randint(95, 170)}/{r.randint(55, 100)} HR {r.randint(52, 118)} "
        f"SpO2 {r.randint(91, 100)}% | {body}\n"
    )


def _csv_line(r: random.Random) -> str:
    code, name, unit, low, high = r.choice(LAB_TESTS)
    value = round(r.uniform(low * 0.7, high * 1.3), 1)
    flag = "H" if value > high else "L" if value < low else "N"
    return (
        f"{_mrn(r)},ENC{r.randint(0, 999_999):07d},{code},{name},{value},{unit},"
        f"{low},{high},{flag},{_ts(r)},{r.choice(DEPARTMENTS)}\n"
    )


def _json_line(r: random.Random) -> str:
    code, name, unit, low, high = r.choice(VITALS)
    doc = {
        "resourceType": "Observation",
        "id": f"{r.getrandbits(128):032x}",
        "status": "final",
        "category": [{"coding": [{"system": "observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}]},
        "subject": {"reference": f"Patient/{_mrn(r)}"},
        "effectiveDateTime": _ts(r),
        "valueQuantity": {"value": round(r.uniform(low, high), 1), "unit": unit},
        "encounter": {"reference": f"Encounter/{r.randint(0, 9_999_999):07d}"},
        "performer": [{"display": f"Nurse {r.choice(SURNAMES)}"}],
        "note": [{"text": _free_text(r, 4, 24)}],
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def _hl7_line(r: random.Random) -> str:
    ts = _ts(r).replace("-", "").replace(":", "").replace("T", "")[:14]
    mrn = _mrn(r)
    return (
        f"MSH|^~\\&|EPIC|HOSP|LAB|HOSP|{ts}||ORU^R01|{r.randint(0, 9_999_999)}|P|2.5.1\r"
        f"PID|1||{mrn}^^^HOSP^MR||{r.choice(SURNAMES).upper()}^{r.choice('ABCDEFGH')}||"
        f"19{r.randint(30, 99)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}|"
        f"{r.choice('MF')}\rOBX|1|NM|{r.choice(LAB_TESTS)[0]}^LN||{r.randint(1, 400)}|||N|||F\n"
    )


def _audit_line(r: random.Random) -> str:
    return (
        f"{_ts(r)} host=ehr-app-{r.randint(1, 6)} user=u{r.randint(1000, 1400)} "
        f"action={r.choice(AUDIT_ACTIONS)} patient={_mrn(r)} ward={r.choice(WARDS)} "
        f"outcome={'success' if r.random() < 0.97 else 'denied'} "
        f"session={r.getrandbits(64):016x}\n"
    )


LINE_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "note": _note_line,
    "csv": _csv_line,
    "json": _json_line,
    "hl7": _hl7_line,
    "audit": _audit_line,
}
TEXT_KINDS = tuple(LINE_MAKERS)
SMALL_TEXT = {"note": ".txt", "csv": ".csv", "json": ".json", "hl7": ".hl7", "audit": ".log"}
SMALL_RANDOM = {"scan": ".dcm", "letter": ".pdf"}
BIG_TEXT = {
    "audit": ("logs", "audit", ".log"),
    "csv": ("exports", "lab_results", ".csv"),
    "json": ("exports", "observations", ".ndjson"),
    "note": ("exports", "clinical_notes", ".txt"),
    "hl7": ("interfaces", "hl7_archive", ".hl7"),
}


class TextSource:
    """Lines drawn with replacement from a pool per kind: bounded vocabulary, real repetition."""

    def __init__(self, seed: int) -> None:
        self.pools: dict[str, list[bytes]] = {}
        for number, (kind, maker) in enumerate(LINE_MAKERS.items()):
            r = random.Random(seed * 1000 + number)
            self.pools[kind] = [maker(r).encode() for _ in range(POOL_LINES)]
        self.mean_line = {k: sum(map(len, p)) / len(p) for k, p in self.pools.items()}

    def blocks(self, kind: str, size: int, r: random.Random) -> Iterator[bytes]:
        """`size` bytes of whole lines (the last one cut), in blocks of about WRITE_BLOCK."""
        pool = self.pools[kind]
        per_block = max(1, int(WRITE_BLOCK / self.mean_line[kind]))
        left = size
        while left > 0:
            lines = r.choices(pool, k=min(per_block, int(left / self.mean_line[kind]) + 1))
            block = b"".join(lines)[:left]
            left -= len(block)
            yield block


def random_blocks(size: int, r: random.Random) -> Iterator[bytes]:
    left = size
    while left > 0:
        n = min(WRITE_BLOCK, left)
        left -= n
        yield r.randbytes(n)


@dataclass
class FileSpec:
    path: str  # relative to the data root
    kind: str  # a text kind, or "random"
    size: int
    seed: int
    big: bool = False


@dataclass
class Manifest:
    version: int
    seed: int
    size_gib: float
    files: list[FileSpec] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    total_bytes: int = 0
    random_bytes: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        files = [FileSpec(**f) for f in doc.pop("files")]
        symlinks = [(a, b) for a, b in doc.pop("symlinks")]
        return cls(files=files, symlinks=symlinks, **doc)


def _log_uniform(r: random.Random, low: int, high: int) -> int:
    return int(math.exp(r.uniform(math.log(low), math.log(high))))


def plan_tree(size_gib: float, seed: int) -> Manifest:
    r = random.Random(seed)
    total = int(size_gib * GiB)
    scale = min(1.0, size_gib / 2)
    big_min, big_max = int(BIG_MIN * scale), int(BIG_MAX * scale)
    manifest = Manifest(GENERATOR_VERSION, seed, size_gib)

    def spec(path: str, kind: str, size: int, big: bool = False) -> None:
        manifest.files.append(FileSpec(path, kind, size, r.getrandbits(63), big))
        manifest.total_bytes += size
        if kind == "random":
            manifest.random_bytes += size

    # Big files: imaging archives (random) and exports/logs (text).
    budgets = {"random": total * BIG_SHARE * RANDOM_SHARE, "text": total * BIG_SHARE * 0.6}
    for family, budget in budgets.items():
        left, n = budget, 0
        while left >= big_min * 0.5:
            size = min(r.randint(big_min, big_max), int(left))
            size = max(size, big_min // 2)
            if family == "random":
                spec(f"imaging/pacs_archive_{n:03d}.bin", "random", size, big=True)
            else:
                kind = TEXT_KINDS[n % len(TEXT_KINDS)]
                folder, stem, ext = BIG_TEXT[kind]
                spec(f"{folder}/{stem}_{2015 + n:04d}{ext}", kind, size, big=True)
            left -= size
            n += 1

    # Small files: per-patient folders under department/year.
    small_total = total - manifest.total_bytes
    random_left = total * RANDOM_SHARE - manifest.random_bytes
    text_left = small_total - random_left
    n = 0
    while random_left > 0 or text_left > 0:
        take_random = random_left > 0 and (
            text_left <= 0 or r.random() < random_left / (random_left + text_left)
        )
        size = _log_uniform(r, SMALL_MIN, SMALL_MAX)
        if n % 300 == 299:
            size = 0  # a few empty files, as real trees have
        dept = DEPARTMENTS[(n // FILES_PER_DIR) % len(DEPARTMENTS)]
        year = 2018 + (n // (FILES_PER_DIR * len(DEPARTMENTS))) % 7
        folder = f"patients/{dept}/{year}/p{(n // FILES_PER_DIR):05d}"
        if take_random:
            kind = r.choice(list(SMALL_RANDOM))
            spec(f"{folder}/{kind}_{n:06d}{SMALL_RANDOM[kind]}", "random", size)
            random_left -= size
        else:
            kind = r.choice(TEXT_KINDS)
            spec(f"{folder}/{kind}_{n:06d}{SMALL_TEXT[kind]}", kind, size)
            text_left -= size
        n += 1
    for dept in DEPARTMENTS:
        manifest.symlinks.append((f"patients/{dept}/current", "2024"))
    manifest.symlinks.append(("exports/latest_labs.csv", "lab_results_2016.csv"))
    return manifest


def write_content(path: Path, kind: str, size: int, seed: int, text: TextSource) -> None:
    r = random.Random(seed)
    blocks = random_blocks(size, r) if kind == "random" else text.blocks(kind, size, r)
    with open(path, "wb") as out:
        for block in blocks:
            out.write(block)


def generate(root: Path, size_gib: float, seed: int) -> Manifest:
    """Write the tree under `root` (replacing it) and return its manifest."""
    if root.exists():
        shutil.rmtree(root)
    manifest = plan_tree(size_gib, seed)
    text = TextSource(seed)
    for spec in manifest.files:
        path = root / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        write_content(path, spec.kind, spec.size, spec.seed, text)
    for link, target in manifest.symlinks:
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / link)
    return manifest


def compression_ratio(root: Path, manifest: Manifest, sample: int = 64 * MiB) -> dict[str, float]:
    """zstd level 1 ratio of the text files and of everything, on a sample of files."""
    try:
        import zstandard
    except ImportError:
        return {}
    comp = zstandard.ZstdCompressor(level=1)
    r = random.Random(manifest.seed + 7)
    files = list(manifest.files)
    r.shuffle(files)
    raw = {"text": 0, "all": 0}
    packed = {"text": 0, "all": 0}
    for spec in files:
        if raw["all"] >= sample:
            break
        data = (root / spec.path).read_bytes()[: 4 * MiB]
        size = len(comp.compress(data))
        raw["all"] += len(data)
        packed["all"] += size
        if spec.kind != "random":
            raw["text"] += len(data)
            packed["text"] += size
    return {k: round(raw[k] / packed[k], 2) for k in raw if packed[k]}


# -- the 1% change ------------------------------------------------------------------------


@dataclass
class Undo:
    restore_files: dict[str, bytes] = field(default_factory=dict)  # whole small files
    regions: list[tuple[str, int, bytes]] = field(default_factory=list)  # path, offset, bytes
    truncate: list[tuple[str, int]] = field(default_factory=list)  # path, original size
    remove: list[str] = field(default_factory=list)  # files created by the change
    bytes_changed: int = 0


def mutate(root: Path, manifest: Manifest, fraction: float = 0.01) -> Undo:
    """Change ~`fraction` of the bytes the same way every time: rewrite small files (40% of
    the change), overwrite a region in two big files (30%), append to a big log (20%) and add
    a few new files (10%). Returns what `undo` needs to put the tree back."""
    r = random.Random(manifest.seed + 1)
    text = TextSource(manifest.seed + 1)
    budget = manifest.total_bytes * fraction
    undo = Undo()

    small = [f for f in manifest.files if not f.big and f.size > 0]
    r.shuffle(small)
    left = budget * 0.4
    for spec in small:
        if left <= 0:
            break
        path = root / spec.path
        undo.restore_files[spec.path] = path.read_bytes()
        write_content(path, spec.kind, spec.size, r.getrandbits(63), text)
        left -= spec.size
        undo.bytes_changed += spec.size

    big_random = [f for f in manifest.files if f.big and f.kind == "random"]
    big_text = [f for f in manifest.files if f.big and f.kind != "random"]
    for spec in [*big_random[:1], *big_text[:1]]:
        length = min(int(budget * 0.15), spec.size // 2)
        offset = r.randint(0, spec.size - length)
        path = root / spec.path
        with open(path, "r+b") as handle:
            handle.seek(offset)
            undo.regions.append((spec.path, offset, handle.read(length)))
            blocks = (
                random_blocks(length, r)
                if spec.kind == "random"
                else text.blocks(spec.kind, length, r)
            )
            handle.seek(offset)
            for block in blocks:
                handle.write(block)
        undo.bytes_changed += length

    logs = [f for f in big_text if f.kind == "audit"] or big_text
    if logs:
        spec = logs[-1]
        path = root / spec.path
        undo.truncate.append((spec.path, path.stat().st_size))
        length = int(budget * 0.2)
        with open(path, "ab") as handle:
            for block in text.blocks(spec.kind, length, r):
                handle.write(block)
        undo.bytes_changed += length

    left = budget * 0.1
    n = 0
    while left >= 1:
        size = max(1, min(int(left), _log_uniform(r, 64 * 1024, SMALL_MAX)))
        kind = r.choice(TEXT_KINDS)
        rel = f"patients/admissions/new/{kind}_{n:04d}{SMALL_TEXT[kind]}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_content(root / rel, kind, size, r.getrandbits(63), text)
        undo.remove.append(rel)
        undo.bytes_changed += size
        left -= size
        n += 1
    return undo


def undo_mutation(root: Path, undo: Undo) -> None:
    for rel, data in undo.restore_files.items():
        (root / rel).write_bytes(data)
    for rel, offset, data in undo.regions:
        with open(root / rel, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)
    for rel, size in undo.truncate:
        os.truncate(root / rel, size)
    for rel in undo.remove:
        (root / rel).unlink()
    if undo.remove:
        shutil.rmtree(root / "patients/admissions")


def warm_cache(root: Path) -> int:
    """Read every file once so the backup reads from the page cache, not the disk."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            with open(path, "rb", buffering=0) as handle:
                while chunk := handle.read(WRITE_BLOCK):
                    total += len(chunk)
    return total
