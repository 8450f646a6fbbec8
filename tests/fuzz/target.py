"""One harness under atheris (libFuzzer, coverage-guided), as `make fuzz` starts it:

    python -m tests.fuzz.target HARNESS [libFuzzer options] CORPUS_DIR

medvault's modules are instrumented so that coverage guides the mutations. A crash (any
exception a harness does not accept) stops the run and libFuzzer writes the input to the
artifact prefix, except in `reported` harnesses: their crashes are collected into
FINDINGS_FILE (JSON, rewritten as they come) and the run goes on.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import atheris

with atheris.instrument_imports(include=["medvault"]):
    from tests.fuzz.harnesses import HARNESSES, Findings, bounded_memory, run_bounded


def main() -> None:
    harness = HARNESSES[sys.argv[1]]
    findings_file = os.environ.get("FINDINGS_FILE", "")
    findings = Findings()

    def save() -> None:
        if findings_file:
            doc = [
                {
                    "signature": f.signature,
                    "count": f.count,
                    "input": base64.b64encode(f.shortest).decode(),
                    "message": f.example,
                }
                for f in findings
            ]
            with open(findings_file, "w", encoding="utf-8") as out:
                json.dump(doc, out)

    def one_input(data: bytes) -> None:
        if not harness.reported:
            run_bounded(harness, data)
            return
        try:
            run_bounded(harness, data)
        except Exception as exc:
            before = len(findings.by_signature)
            findings.add(exc, data)
            if len(findings.by_signature) != before or len(data) < 64:
                save()

    harness.seeds()  # builds the shared world before the memory limit is taken
    with bounded_memory():
        atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
