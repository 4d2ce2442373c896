"""Shrink a failing input while it keeps failing the same way.

Two levels: for any target, delta debugging over the input bytes (drop ever smaller chunks,
then lower bytes towards zero); for the pipeline and media targets, the mutated capture is then
reduced packet by packet (``minimize_capture``), which is what goes into
tests/data/regressions.  "The same way" is the finding's signature (:mod:`fuzz.findings`);
the delta debugging itself is :mod:`fuzz.delta_debugging`.

    python -m fuzz.run minimize TARGET FINDING_FOLDER
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from fuzz import findings
from fuzz.delta_debugging import ddmin


def signature_of(target: str, data: bytes) -> str | None:
    """The signature this input fails with under a target, or None if it passes."""
    module = importlib.import_module(f"fuzz.targets.{target}")
    try:
        module.one_input(data)
    except Exception as exc:
        context = ""
        if hasattr(module, "context"):
            try:
                context = module.context(data)
            except Exception:
                context = "?"
        return findings.from_exception(target, exc, data, context).signature
    return None


def minimize_input(target: str, data: bytes) -> bytes:
    wanted = signature_of(target, data)
    if wanted is None:
        raise ValueError("the input does not fail")
    return ddmin(data, lambda d: signature_of(target, d) == wanted)


def minimize_finding(target: str, folder: Path) -> int:
    data = (folder / "input.bin").read_bytes()
    small = minimize_input(target, data)
    (folder / "input.min.bin").write_bytes(small)
    print(f"{folder}: {len(data)} -> {len(small)} bytes (input.min.bin)")
    if target in ("pipeline", "media"):
        from fuzz import mutate

        if target == "pipeline":
            from fuzz.targets.pipeline import minimize_capture

            reduced = minimize_capture(mutate.mutate(small))
        else:
            from fuzz.targets import media

            reduced = media.minimize_capture(media.mutated(small))
        (folder / f"capture.min{reduced.suffix}").write_bytes(reduced.data)
        print(
            f"{folder}: capture reduced to {len(reduced.data)} bytes (capture.min{reduced.suffix})"
        )
    meta = folder / "finding.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        info["minimized_size"] = len(small)
        meta.write_text(json.dumps(info, indent=1) + "\n")
    return 0


def minimize_capture_folder(folder: Path) -> int:
    """Reduce a pipeline finding's saved capture (``capture.*``, ``command.txt`` and
    ``keylog.txt``), independently of the program that made it: for findings of an older
    version of the mutation code, whose inputs no longer decode the same."""
    import shlex

    from fuzz import mutate
    from fuzz.paths import REPO
    from fuzz.targets.pipeline import minimize_capture

    lines = (folder / "command.txt").read_text().splitlines()
    fixture = lines[0].split()[2].rstrip(";")
    args = shlex.split(lines[1])
    capture = folder / args[args.index("-r") + 1]
    keys = [REPO / args[i + 1] for i, a in enumerate(args) if a == "-k"]
    keylog = (folder / "keylog.txt").read_text(errors="replace") if "--keylog" in args else None
    seed = next(s for s in mutate.seeds() if s.name == fixture)
    suffix = "".join(capture.suffixes)
    found = mutate.Mutated(seed, capture.read_bytes(), suffix, keys, keylog, ["(a saved capture)"])
    reduced = minimize_capture(found)
    out = folder / f"capture.min{reduced.suffix}"
    out.write_bytes(reduced.data)
    print(f"{folder}: {len(found.data)} -> {len(reduced.data)} bytes ({out.name})")
    return 0
