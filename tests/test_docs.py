"""The docs name paths relative to the repository, never a path on one machine."""

from __future__ import annotations

import re

from procs import REPO

ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:work|home|root|Users)/[\w./-]*")


def doc_files() -> list:
    return [
        REPO / "README.md",
        REPO / "BENCHMARKS.md",
        REPO / "bench" / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
    ]


def test_docs_name_no_machine_paths():
    found = [
        f"{path.relative_to(REPO)}:{n}: {m.group(0)}"
        for path in doc_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for m in ABSOLUTE.finditer(line)
    ]
    assert not found, "absolute paths of one machine in the docs:\n" + "\n".join(found)


def test_the_pattern_catches_what_it_should():
    assert ABSOLUTE.search("read `/work/shared/data/x.jsonl` first")
    assert ABSOLUTE.search("in /home/me/data")
    assert not ABSOLUTE.search("`../shared/data/x.jsonl` and http://host/work/x and /v1/chat/completions")
