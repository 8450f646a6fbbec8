"""A short run of every fuzz harness (tests/fuzz/harnesses.py): its seeds, then EXAMPLES
inputs that hypothesis draws (bytes, and seeds with bytes overwritten, inserted or cut).
The long run, over a million inputs under atheris, is `make fuzz`."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz.harnesses import HARNESSES, Harness, bounded_memory, run_bounded

EXAMPLES = 300


def mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for position, how, chunk in edits:
        at = position % (len(data) + 1)
        if how == 0:
            data[at : at + len(chunk)] = chunk
        elif how == 1:
            data[at:at] = chunk
        elif how == 2:
            del data[at : at + len(chunk) + 1]
        else:
            del data[at:]
    return bytes(data)


def inputs(harness: Harness) -> st.SearchStrategy[bytes]:
    seeds = harness.seeds()
    edits = st.lists(
        st.tuples(st.integers(0, 1 << 16), st.integers(0, 3), st.binary(max_size=8)),
        max_size=4,
    )
    mutated = st.builds(mutate, st.sampled_from(seeds), edits)
    return st.one_of(mutated, st.binary(max_size=256))


@pytest.mark.parametrize("harness", [pytest.param(h, id=h.name) for h in HARNESSES.values()])
def test_parser_answers_hostile_input_with_its_own_errors(harness: Harness) -> None:
    with bounded_memory():
        for seed in harness.seeds():
            run_bounded(harness, seed)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(inputs(harness))
        def hostile(data: bytes) -> None:
            run_bounded(harness, data)

        hostile()
