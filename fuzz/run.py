"""Run fuzz targets and collect what they find.

    python -m fuzz.run list
    python -m fuzz.run TARGET --seconds N      (or --runs N)
    python -m fuzz.run all --budget SECONDS    (the budget split between the targets)
    python -m fuzz.run tcp,sip --budget SECONDS (the same, for the targets named)
    python -m fuzz.run replay TARGET FILE...   (run saved inputs once; failures raise)
    python -m fuzz.run minimize TARGET FINDING_FOLDER
    python -m fuzz.run minimize-capture FINDING_FOLDER...   (pipeline: shrink the capture)

Options: ``--seed`` (libFuzzer's random seed; fixed by default so a run is repeatable),
``--work DIR`` (default ``.fuzz``) holds ``findings/``, ``corpus/`` (the inputs libFuzzer
found interesting, kept between runs; ``--fresh`` starts from the seeds alone, as CI does),
``seeds/`` and ``logs/``; ``--findings`` and ``--corpus`` put those elsewhere.
``--timeout`` is the seconds one input may take before libFuzzer calls it a hang.

Each target runs in its own process under atheris (``fuzz.harness``); its libFuzzer log is
``WORK/logs/TARGET.log``.  A failure is saved under ``FINDINGS/TARGET/SIGNATURE/`` with the
input, the traceback and, for the pipeline, the mutated capture and a command line.  The
exit status is 1 when any target hit a finding, 0 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuzz import findings
from fuzz.paths import REPO, WORK
from fuzz.targets import TARGETS

DEFAULT_SEED = 1234
RESTARTS = 20  # after libFuzzer stops on a hang or crash, go on this many times at most


def _target(name: str):  # -> ModuleType
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    return importlib.import_module(f"fuzz.targets.{name}")


def _write_seeds(name: str, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for index, data in enumerate(_target(name).seeds()):
        (folder / f"seed-{index:04d}").write_bytes(data)


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STATUS = re.compile(r"^#(\d+)\s")


def fuzz_target(
    name: str,
    *,
    seconds: float | None,
    runs: int | None,
    seed: int,
    findings_root: Path,
    corpus_root: Path,
    work: Path,
    timeout: int,
    quiet: bool = False,
) -> dict[str, object]:
    """Fuzz one target for a time or a number of inputs; returns what happened."""
    module = _target(name)
    corpus = corpus_root / name
    corpus.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    seeds = work / "seeds" / name
    _write_seeds(name, seeds)
    logs.mkdir(parents=True, exist_ok=True)
    findings_root.mkdir(parents=True, exist_ok=True)
    hits = logs / f"{name}.hits.jsonl"
    hits.unlink(missing_ok=True)
    log_path = logs / f"{name}.log"
    env = dict(
        os.environ,
        PYTHONHASHSEED="0",
        PYTHONPATH=os.pathsep.join(
            [str(REPO), str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    )
    total_runs = 0
    started = time.monotonic()
    stops: list[str] = []
    with log_path.open("w") as log:
        for attempt in range(RESTARTS + 1):
            options = [
                f"-seed={seed + attempt}",
                f"-max_len={module.MAX_LEN}",
                f"-timeout={timeout}",
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
                f"-artifact_prefix={findings_root / name}/libfuzzer-",
            ]
            if runs is not None:
                if total_runs >= runs:
                    break
                options.append(f"-runs={runs - total_runs}")
            if seconds is not None:
                left = seconds - (time.monotonic() - started)
                if left < 1:
                    break
                options.append(f"-max_total_time={max(1, int(left))}")
            dictionary = getattr(module, "DICTIONARY", None)
            if dictionary:
                dict_path = work / "seeds" / f"{name}.dict"
                dict_path.write_text(
                    "".join(
                        '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n' for token in dictionary
                    )
                )
                options.append(f"-dict={dict_path}")
            (findings_root / name).mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "fuzz.harness",
                name,
                "--findings",
                str(findings_root),
                "--hits",
                str(hits),
                "--",
                *options,
                str(corpus),
                str(seeds),
            ]
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            assert proc.stderr is not None
            done = last_status = 0
            for line in proc.stderr:
                log.write(line)
                status = _STATUS.match(line)
                if status:
                    last_status = int(status.group(1))
                match = _DONE.search(line)
                if match:
                    done = int(match.group(1))
                if not quiet and ("FINDING" in line or line.startswith("==")):
                    print(f"[{name}] {line.rstrip()}", file=sys.stderr, flush=True)
            code = proc.wait()
            total_runs += done or last_status
            if code == 0:
                break
            stops.append(f"libFuzzer stopped with status {code}")
            if not _record_libfuzzer_artifacts(name, findings_root, log_path, hits):
                print(
                    f"[{name}] stopped with status {code} and no input to blame; see {log_path}",
                    file=sys.stderr,
                    flush=True,
                )
                break
    result = {
        "target": name,
        "runs": total_runs,
        "seconds": round(time.monotonic() - started, 1),
        "hits": _read_hits(hits),
        "stops": stops,
    }
    if not quiet:
        print(
            f"[{name}] {total_runs} inputs in {result['seconds']} s, "
            f"{len(result['hits'])} distinct findings",
            file=sys.stderr,
            flush=True,
        )
    return result


def _record_libfuzzer_artifacts(name: str, root: Path, log_path: Path, hits: Path) -> int:
    """A libFuzzer stop (timeout, out of memory, interpreter crash) as a finding."""
    count = 0
    for artifact in sorted((root / name).glob("libfuzzer-*")):
        kind = artifact.name.split("-")[1]
        data = artifact.read_bytes()
        tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-60:])
        finding = findings.Finding(
            name, f"libfuzzer-{kind}", f"libFuzzer: {kind}", f"libfuzzer:{kind}", tail, data
        )
        folder, new = findings.save(finding, root)
        artifact.unlink()
        findings.record_hit(hits, name, finding, new, folder)
        print(
            f"[{name}] FINDING {finding.signature} (input {len(data)} bytes) -> {folder}",
            file=sys.stderr,
            flush=True,
        )
        count += 1
    return count


def _read_hits(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = {}
    for line in path.read_text().splitlines():
        hit = json.loads(line)
        out[hit["signature"]] = hit
    return list(out.values())


def replay(name: str, files: list[Path]) -> int:
    """Run inputs through a target once each, without atheris; print each failure."""
    module = _target(name)
    failed = 0
    for path in files:
        try:
            module.one_input(path.read_bytes())
        except Exception as exc:
            failed += 1
            finding = findings.from_exception(name, exc, b"")
            print(f"{path}: {finding.summary} [{finding.location}]")
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        help="a target, a comma-separated list, 'all', 'list', "
        "'replay', 'minimize' or 'minimize-capture'",
    )
    parser.add_argument("rest", nargs="*", help="for replay / minimize: TARGET and files")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--budget", type=float, help="with 'all': seconds for all targets")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--work",
        type=Path,
        default=WORK,
        help="folder for findings, corpus, seeds and logs (default .fuzz)",
    )
    parser.add_argument("--findings", type=Path, help="default WORK/findings")
    parser.add_argument("--corpus", type=Path, help="default WORK/corpus")
    parser.add_argument(
        "--fresh", action="store_true", help="start from the seeds alone (a new, empty corpus)"
    )
    parser.add_argument("--timeout", type=int, default=60)
    args = parser.parse_args(argv)

    if args.target == "list":
        for name, weight in TARGETS.items():
            doc = (_target(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:12s} {weight:4.1f}  {doc}")
        return 0
    if args.target == "replay":
        if len(args.rest) < 2:
            parser.error("replay TARGET FILE...")
        return replay(args.rest[0], [Path(p) for p in args.rest[1:]])
    if args.target == "minimize":
        if len(args.rest) != 2:
            parser.error("minimize TARGET FINDING_FOLDER")
        from fuzz.minimize import minimize_finding

        return minimize_finding(args.rest[0], Path(args.rest[1]))
    if args.target == "minimize-capture":
        from fuzz.minimize import minimize_capture_folder

        return max(minimize_capture_folder(Path(folder)) for folder in args.rest)

    corpus_root = args.corpus or args.work / "corpus"
    if args.fresh:
        corpus_root = Path(tempfile.mkdtemp(prefix="captagent-fuzz-corpus-"))
    common = dict(
        seed=args.seed,
        findings_root=args.findings or args.work / "findings",
        corpus_root=corpus_root,
        work=args.work,
        timeout=args.timeout,
    )
    if args.target == "all" or "," in args.target:
        if args.budget is None:
            parser.error("all (or a list of targets) needs --budget SECONDS")
        results = []
        started = time.monotonic()
        names = list(TARGETS) if args.target == "all" else args.target.split(",")
        for name in names:
            _target(name)
        for index, name in enumerate(names):
            left = args.budget - (time.monotonic() - started)
            weights = sum(TARGETS[n] for n in names[index:])
            share = max(5.0, left * TARGETS[name] / weights)
            results.append(fuzz_target(name, seconds=share, runs=None, **common))
    else:
        if (args.seconds is None) == (args.runs is None):
            parser.error("give --seconds N or --runs N")
        results = [fuzz_target(args.target, seconds=args.seconds, runs=args.runs, **common)]
    if args.fresh:
        shutil.rmtree(corpus_root, ignore_errors=True)

    hit_any = False
    print("\n--- fuzz summary ---")
    for result in results:
        print(
            f"{result['target']:12s} {result['runs']:>10} inputs {result['seconds']:>8} s"
            f"  {len(result['hits'])} findings"
        )
        for hit in result["hits"]:
            hit_any = True
            print(f"    {hit['summary']}  [{hit['location']}]\n      -> {hit['folder']}")
    return 1 if hit_any else 0


if __name__ == "__main__":
    sys.exit(main())
