"""Course check: the student tree and the reference expose the same public API.

Compares src/tiny_attn with refsol/tiny_attn_ref, and the extension tiny_attn_ext with
tiny_attn_ext_ref: the same exported names, the same signatures (functions, classes and
their public methods), the same kinds of objects.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from tiny_attn_tools import build_ext


def public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        names = [n for n in names if not inspect.ismodule(getattr(module, n))]
    return sorted(names)


def signature_of(obj: Any) -> str:
    """A comparable signature: Python's own, or a nanobind function's first docstring line."""
    nb_sig = getattr(obj, "__nb_signature__", None)
    if nb_sig:
        # (signature with \0, \1 ... for defaults, docstring, default values' reprs)
        return " | ".join(f"{s[0]} defaults={s[2]!r}" for s in nb_sig)
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        doc = (getattr(obj, "__doc__", "") or "").strip().splitlines()
        return doc[0] if doc else ""


def describe(obj: Any) -> dict[str, str]:
    """name -> signature, for a function, or a class and its public methods."""
    if inspect.isclass(obj):
        out = {"(class)": signature_of(obj)}
        for name, member in vars(obj).items():
            if name.startswith("_") and name not in ("__init__", "__call__"):
                continue
            if callable(member) or isinstance(member, (property, staticmethod, classmethod)):
                target = (
                    member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                )
                out[name] = signature_of(target) if callable(target) else "(property)"
        return out
    if callable(obj):
        return {"": signature_of(obj)}
    return {"": f"({type(obj).__name__})"}


def compare(student_name: str, ref_name: str, problems: list[str]) -> int:
    student = importlib.import_module(student_name)
    ref = importlib.import_module(ref_name)
    s_names, r_names = public_names(student), public_names(ref)
    for n in sorted(set(r_names) - set(s_names)):
        problems.append(f"{student_name} lacks `{n}` (exported by {ref_name})")
    for n in sorted(set(s_names) - set(r_names)):
        problems.append(f"{student_name} exports `{n}`, which {ref_name} does not")
    for n in sorted(set(s_names) & set(r_names)):
        s, r = describe(getattr(student, n)), describe(getattr(ref, n))
        for member in sorted(set(s) | set(r)):
            label = f"{n}.{member}" if member else n
            if s.get(member) != r.get(member):
                s_sig = s.get(member, "(missing)").replace(student_name, "<pkg>")
                r_sig = r.get(member, "(missing)").replace(ref_name, "<pkg>")
                if s_sig != r_sig:
                    problems.append(
                        f"`{label}` differs:\n    {student_name}: {s_sig}\n    {ref_name}: {r_sig}"
                    )
    return len(set(s_names) & set(r_names))


def main() -> int:
    problems: list[str] = []
    n = compare("tiny_attn", "tiny_attn_ref", problems)
    print(f"[check-api] tiny_attn vs tiny_attn_ref: {n} names compared")
    for which in ("student", "ref"):
        build_ext.ensure_built(which)
    n = compare("tiny_attn_ext", "tiny_attn_ext_ref", problems)
    print(f"[check-api] tiny_attn_ext vs tiny_attn_ext_ref: {n} names compared")
    if problems:
        print(f"[check-api] FAILED: {len(problems)} difference(s)")
        for p in problems:
            print("  " + p)
        return 1
    print("[check-api] ok: the student and reference APIs match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
