"""Course check: every day's skeleton, on top of correct earlier days, fails cleanly.

For each day D of the course, a student tree is put together in build/progression/: the
reference solution for every day before D and the untouched stubs of day D and later. Day D's
graded tests then run against it, supervised (tiny_attn_tools.supervise). Every test must fail
with the stub's message ("... is not implemented yet: see book/src/..."): never pass (a test
that passes on a stub checks nothing), crash or hang. Where day D's stubs are all Metal code,
which has no way to raise, a test may fail on the placeholder's output instead, but still
never pass, crash or hang.

What belongs to which day comes from the stubs themselves: a "see book/src/weekW-DD-..." or a
"TODO(day N, ...)" names the day; a "TODO(Task N)" belongs to the day of the section it is in
(the last "book/src/weekW-DD" above it). A file whose stubs are all of one day is taken whole,
from the reference or from the stubs. In a C++ or Metal file with stubs of several days, each
top-level definition (function, kernel, struct, constant) is taken by its own day. A definition
whose stub holds work of two days cannot be split that way, by this check or by a student
(the later day's placeholder sits inside the earlier day's code): the check reports it.

Builds are reused: the tree stays in build/progression/ and only files whose text changed are
rewritten, so the extension recompiles incrementally and metalsim's kernel cache hits.

  pdm run check-progression [--week W --day D]
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tiny_attn_tools import course, supervise

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "build" / "progression"
PACKAGE_FOLDERS = ["src", "src/extensions", "refsol", "refsol/extensions_ref", "tools"]
# The folders a student writes in, and their reference twins (files pair up by name).
PAIRS = [
    ("src/tiny_attn", "refsol/tiny_attn_ref"),
    ("src/extensions/src", "refsol/extensions_ref/src"),
]

SOURCE_SUFFIXES = {".py", ".cpp", ".h", ".hpp", ".metal", ".txt", ".cmake", ".toml"}
Day = tuple[int, int]
CHAPTER_RE = re.compile(r"book/src/week(\d+)-(\d\d)-")
TODO_DAY_RE = re.compile(r"TODO\(day (\d+)")
TODO_TASK_RE = re.compile(r"TODO\(Tasks? \d")


def chapter_days(text: str) -> set[Day]:
    return {(int(w), int(d)) for w, d in CHAPTER_RE.findall(text)}


# ---------------------------------------------------------------- C++ / Metal: top-level chunks


@dataclass
class Chunk:
    key: str  # the declaration's head, comments and spaces normalised; "" for comments only
    text: str  # with the comments and blank lines above it
    days: set[Day]
    mixed: bool = False
    section: Day | None = None  # the day of the section the chunk ends in


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"//[^\n]*", " ", code)


def split_chunks(text: str) -> list[str]:
    """Top-level pieces of a C++/Metal file: each definition or declaration with the comments
    right above it; a comment block followed by a blank line stands alone; an #if ... #endif
    group is one piece. The inside of a namespace is top level; its opening and closing lines
    are pieces of their own."""
    pieces, start, i, depth, n = [], 0, 0, 0, len(text)
    namespace_braces: list[int] = []  # depths at which a namespace was opened

    def line_end(k: int) -> int:
        e = text.find("\n", k)
        return n if e < 0 else e

    while i < n:
        c = text[i]
        top = depth == len(namespace_braces)
        if text.startswith("//", i):
            i = line_end(i)
            continue
        if text.startswith("/*", i):
            i = text.find("*/", i) + 2
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "\n" and top and text.startswith("\n\n", i):
            if text[start:i].strip() and not _strip_comments(text[start:i]).strip():
                pieces.append(text[start : i + 1])  # a comment block of its own
                start = i + 1
        elif c == "#" and top and not text[text.rfind("\n", 0, i) + 1 : i].strip():
            end, level = line_end(i), 0
            if re.match(r"#\s*if", text[i:]):  # to the matching #endif
                k = i
                while k < n:
                    directive = re.match(r"#\s*(if|endif)", text[k:])
                    if directive:
                        level += 1 if directive.group(1) == "if" else -1
                        if level == 0:
                            break
                    k = line_end(k) + 1
                end = line_end(k)
            pieces.append(text[start:end])
            start = i = end
            continue
        elif c == "{":
            head = _strip_comments(text[start:i]).strip()
            if top and re.fullmatch(r"namespace(\s+\w+)?", head):
                namespace_braces.append(depth)
                depth += 1
                pieces.append(text[start : i + 1])
                start = i = i + 1
                continue
            depth += 1
        elif c == "}":
            depth -= 1
            if namespace_braces and depth == namespace_braces[-1]:
                namespace_braces.pop()
                pieces.append(text[start : i + 1])
                start = i = i + 1
                continue
            if depth == len(namespace_braces):
                j = i + 1
                while j < n and text[j] in " \t;":
                    j += 1
                pieces.append(text[start:j])
                start = i = j
                continue
        elif c == ";" and top:
            pieces.append(text[start : i + 1])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return pieces


def chunk_key(piece: str) -> str:
    code = _strip_comments(piece).strip()
    # An explicit instantiation is known by the name it exports: template [[host_name("k")]].
    code = re.sub(r'\[\[host_name\("(\w+)"\)\]\]', r"host_name \1", code)
    if code.startswith("#if"):  # a conditional group: named after what it defines
        inner = "\n".join(code.splitlines()[1:])
        return "#if " + chunk_key(inner)
    head = re.split(r"[({=;]", code, maxsplit=1)[0]
    return " ".join(head.split())


def parse_chunks(text: str, week: int) -> list[Chunk]:
    """The pieces of a stub or reference file, each with the days its stubs name."""
    chunks, section = [], None
    for piece in split_chunks(text):
        explicit = chapter_days(piece) | {(week, int(d)) for d in TODO_DAY_RE.findall(piece)}
        days = set(explicit)
        chapters = chapter_days(piece)
        if TODO_TASK_RE.search(piece) and (section or chapters):
            days.add(sorted(chapters)[-1] if chapters else section)
        if chapters:
            section = sorted(chapters)[-1]
        chunks.append(Chunk(chunk_key(piece), piece, days, len(days) > 1, section))
    return chunks


def compose_chunks(stub: str, ref: str, day: Day, week: int) -> str:
    """A file with the reference's definitions for days before `day` and the stub's after."""
    s_chunks, r_chunks = parse_chunks(stub, week), parse_chunks(ref, week)
    file_first = min((d for c in s_chunks for d in c.days), default=day)

    def ref_only_day(chunk: Chunk, before: int) -> Day:
        # A definition only the reference has: the day of the stub's TODO that names it, else
        # the day of the stub's section at that place (`before`: the stub's chunks above it).
        exported = re.search(r"host_name (\w+)", chunk.key)
        name = [exported.group(1)] if exported else re.findall(r"\w+", chunk.key)[-1:] or [""]
        # By its whole name, or by its last part ("... as flash_attention_simdgroup_f16 and _bf16").
        names = [name[0], "_" + name[0].rsplit("_", 1)[-1]] if "_" in name[0] else name
        for s in s_chunks:
            mentioned = any(n and re.search(rf"(?<![\w]){re.escape(n)}\b", s.text) for n in names)
            if s.key == "" and s.days and mentioned:
                return min(s.days)
        sections = [c.section for c in s_chunks[:before] if c.section]
        return sections[-1] if sections else file_first

    out: list[str] = []
    matcher = difflib.SequenceMatcher(
        a=[c.key for c in s_chunks], b=[c.key for c in r_chunks], autojunk=False
    )
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            for s, r in zip(s_chunks[a0:a1], r_chunks[b0:b1], strict=True):
                d = min(s.days) if s.days else file_first
                use_ref = d < day if s.days else day > file_first
                out.append(r.text if use_ref else s.text)
            continue
        for r in r_chunks[b0:b1]:
            if r.key and ref_only_day(r, a0) < day:
                out.append(r.text)
        for s in s_chunks[a0:a1]:
            if not s.days or min(s.days) >= day:
                out.append(s.text)
    return "".join(out)


# ---------------------------------------------------------------- the tree of one day


@dataclass
class CourseFile:
    student: str  # path relative to the repository
    reference: str
    days: set[Day]  # the days its stubs name
    week: int
    mixed: list[str]  # definitions that hold two days' work


def course_files() -> list[CourseFile]:
    files = []
    for student_dir, ref_dir in PAIRS:
        for stub in sorted((ROOT / student_dir).iterdir()):
            ref = ROOT / ref_dir / stub.name
            if not stub.is_file() or not ref.exists() or stub.name == "__init__.py":
                continue
            text = stub.read_text()
            if stub.suffix == ".py":
                body = text.split('"""', 2)[-1] if text.lstrip().startswith('"""') else text
                days = chapter_days(body)
                week = min(days)[0] if days else 0
                mixed = []
            else:
                days = chapter_days(text)
                week = min(days)[0] if days else 0
                chunks = parse_chunks(text, week)
                days |= {d for c in chunks for d in c.days}
                mixed = [c.key for c in chunks if c.mixed]
            rel_stub, rel_ref = str(stub.relative_to(ROOT)), str(ref.relative_to(ROOT))
            files.append(CourseFile(rel_stub, rel_ref, days, week, mixed))
    return files


def compose(f: CourseFile, day: Day) -> str:
    stub, ref = (ROOT / f.student).read_text(), (ROOT / f.reference).read_text()
    if not f.days or min(f.days) >= day:
        return stub
    if max(f.days) < day:
        return ref
    if f.student.endswith(".py"):
        raise ValueError(f"{f.student} has stubs of several days; split the module")
    return compose_chunks(stub, ref, day, f.week)


def sync_tree() -> None:
    """build/progression/ = the files git knows, rewriting only what changed (keeps mtimes, so
    the builds there stay incremental)."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    tracked = {Path(name.decode()) for name in filter(None, names)}
    for rel in tracked:
        if (ROOT / rel).is_file():
            write_if_changed(TREE / rel, (ROOT / rel).read_bytes())
    # A source file git no longer knows (renamed, deleted) must not stay in the tree: the
    # build globs src/*.cpp. Build outputs (.so, __pycache__, build/) are left alone.
    for folder in ("src", "refsol", "tools", "tests_refsol", "cmake"):
        for path in (TREE / folder).rglob("*"):
            rel = path.relative_to(TREE)
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and rel not in tracked:
                path.unlink()


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


# ---------------------------------------------------------------- the check


def stubbed_tasks(day: Day) -> set[int]:
    """The task numbers of `day` that have a stub: "week3-03-..., Task 2", "TODO(Task 2)" in a
    file of that day, "TODO(day 3, Tasks 2 and 3)"."""
    tasks: set[int] = set()
    chapter = f"week{day[0]}-{day[1]:02d}-"
    for f in course_files():
        if day not in f.days:
            continue
        text = (ROOT / f.student).read_text()
        # In a file of several days, only the definitions of this day count.
        pieces = (
            [text]
            if len(f.days) == 1
            else [c.text for c in parse_chunks(text, f.week) if day in c.days]
        )
        for piece in pieces:
            for m in re.finditer(r"(week\d+-\d\d-)[\w-]*\.md,? Tasks? ([\d, and]+)", piece):
                if m.group(1) == chapter:
                    tasks |= {int(t) for t in re.findall(r"\d+", m.group(2))}
            for m in re.finditer(r"TODO\((?:day (\d+), )?Tasks? ([\d, and]+)", piece):
                if m.group(1) in (None, str(day[1])):
                    tasks |= {int(t) for t in re.findall(r"\d+", m.group(2))}
    return tasks


def judge(outcomes: list[course.Outcome], metal_only: bool, tasks: set[int]) -> list[str]:
    """What is wrong with one day's results. A task without any stub ("no new code": its tests
    check the days before, end to end) may pass; nothing may crash, hang or be skipped."""
    bad = []
    for o in outcomes:
        name = o.name.split("::")[-1]
        first = o.message.strip().splitlines()[0] if o.message.strip() else "(no message)"
        if o.status == "passed" and o.task is not None and o.task not in tasks:
            continue
        if o.status == "passed":
            bad.append(f"{name}: passes on the stubs (a test that cannot fail?)")
        elif o.status in (supervise.CRASHED, supervise.TIMED_OUT, "skipped"):
            bad.append(f"{name}: {o.status}: {first[:300]}")
        elif not metal_only and (
            course.STUB_MARKER not in o.message or "book/src/" not in o.message
        ):
            bad.append(f"{name}: fails without the stub's message: {first[:300]}")
    if not outcomes:
        bad.append("no test ran")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdm run check-progression", description=__doc__)
    parser.add_argument("--week", type=int)
    parser.add_argument("--day", type=int)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    files = course_files()
    problems = [
        f"{f.student}: `{key}` holds work of two days ({', '.join(map(str, sorted(f.days)))}); "
        "give each day's part a definition of its own"
        for f in files
        for key in f.mixed
    ]
    TREE.mkdir(parents=True, exist_ok=True)
    sync_tree()
    # The tree's own packages and tooling come first on the import path: its extension is
    # built in build/progression/build/, apart from this checkout's.
    os.environ["PYTHONPATH"] = os.pathsep.join(str(TREE / d) for d in PACKAGE_FOLDERS)
    days = course.select_days(args.week, args.day)
    for day in days:
        changed = []
        for f in files:
            if write_if_changed(TREE / f.student, compose(f, day).encode()):
                changed.append(Path(f.student).name)
        metal_only = all(f.student.endswith(".metal") for f in files if day in f.days) and any(
            day in f.days for f in files
        )
        t = time.perf_counter()
        if any(name.endswith((".cpp", ".h", ".metal")) for name in changed) or day == days[0]:
            # Built here, incrementally, rather than inside the first test (and its timeout).
            build = subprocess.run(
                [sys.executable, "-m", "tiny_attn_tools.build_ext", "student"],
                cwd=TREE,
                capture_output=True,
                text=True,
            )
            if build.returncode != 0:
                problems.append(
                    f"week {day[0]} day {day[1]}: the student extension does not build:\n"
                    + (build.stdout + build.stderr)[-3000:]
                )
                continue
        outcomes = course.run_graded_against_student([day], root=TREE)
        bad = judge(outcomes, metal_only, stubbed_tasks(day))
        status = "ok" if not bad else f"{len(bad)} problem(s)"
        note = " (Metal stubs: any clean failure)" if metal_only else ""
        print(
            f"[check-progression] week {day[0]} day {day[1]}: {len(outcomes)} tests, {status}"
            f"{note} [{time.perf_counter() - t:.0f} s]",
            flush=True,
        )
        problems += [f"week {day[0]} day {day[1]}: {b}" for b in bad]
    elapsed = time.perf_counter() - t0
    if problems:
        print(f"[check-progression] FAILED ({elapsed:.0f} s): {len(problems)} problem(s)")
        for p in problems:
            print("  " + p)
        return 1
    print(
        f"[check-progression] ok ({elapsed:.0f} s): every day's stubs, on top of the reference "
        "for the days before, fail cleanly"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
