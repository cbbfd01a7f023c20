"""Install (or compare) freshly generated client sources into packages/conductor-client/src.

Used by scripts/codegen.sh. The generated tree replaces what is there, except the hand-written
files listed in codegen/hand-written.txt, which regeneration never touches.

    sync.py install GENERATED_SRC TARGET_SRC   replace generated files, keep hand-written ones
    sync.py check   GENERATED_SRC TARGET_SRC   exit 1 and list differences, change nothing
"""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

HAND_WRITTEN_LIST = Path(__file__).with_name("hand-written.txt")
IGNORED_PARTS = {"__pycache__", ".mypy_cache", ".ruff_cache"}


def hand_written() -> set[str]:
    lines = HAND_WRITTEN_LIST.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def files(root: Path, keep: set[str]) -> set[str]:
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if (
            path.is_file()
            and not IGNORED_PARTS & set(rel.parts)
            and rel.as_posix() not in keep
            and not rel.name.endswith(".pyc")
            and ".egg-info" not in str(rel)
        ):
            found.add(rel.as_posix())
    return found


def differences(generated: Path, target: Path, keep: set[str]) -> list[str]:
    new, old = files(generated, keep), files(target, keep)
    diffs = [f"only in the new output: {p}" for p in sorted(new - old)]
    diffs += [f"not generated any more: {p}" for p in sorted(old - new)]
    diffs += [
        f"differs: {p}"
        for p in sorted(new & old)
        if not filecmp.cmp(generated / p, target / p, shallow=False)
    ]
    return diffs


def install(generated: Path, target: Path, keep: set[str]) -> None:
    for rel in files(target, keep):
        (target / rel).unlink()
    for rel in sorted(files(generated, keep)):
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(generated / rel, destination)
    # Folders emptied by a removed model or API.
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in {"install", "check"}:
        print(__doc__, file=sys.stderr)
        return 2
    generated, target = Path(argv[2]), Path(argv[3])
    keep = hand_written()
    if argv[1] == "install":
        install(generated, target, keep)
        return 0
    diffs = differences(generated, target, keep)
    for line in diffs:
        print(line)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
