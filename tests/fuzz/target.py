"""One harness under atheris (libFuzzer, coverage-guided), as `make fuzz` starts it:

    python -m tests.fuzz.target HARNESS [libFuzzer options] CORPUS_DIR

medvault's modules are instrumented so that coverage guides the mutations. A crash (any
exception a harness does not accept) stops the run and libFuzzer writes the input to the
artifact prefix.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["medvault"]):
    from tests.fuzz.harnesses import HARNESSES, bounded_memory, run_bounded


def main() -> None:
    harness = HARNESSES[sys.argv[1]]

    def one_input(data: bytes) -> None:
        run_bounded(harness, data)

    harness.seeds()  # builds the shared world before the memory limit is taken
    with bounded_memory():
        atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
