"""Count the bad inputs of tests/test_errors.py that pixelwise answers in one sentence with exit 2.

Runs every case of the table as a real subprocess (``python -m pixelwise.cli ...``) against the
checkout given by ``--code`` (default: this one), so the same table can measure an older commit:

    git worktree add /tmp/before a35b7b3
    python benchmarks/bad_inputs.py --code /tmp/before --label before
    python benchmarks/bad_inputs.py --label after

"Answered" means: exit status 2, one ``error:`` line on stderr, no traceback, and every file the
case made (and the checkpoint) byte-identical with no file added. ``fragment`` also records whether
the sentence holds the fragment the test expects (only meaningful for the current code). Results
are printed and merged into benchmarks/results/bad_inputs.json under the label.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_engine import tiny_config  # noqa: E402
from tests.test_errors import CASES, answered, snapshot  # noqa: E402


def _cli(code: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code), "PIXELWISE_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "pixelwise.cli", *argv],
        cwd=code, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose pixelwise is run")
    parser.add_argument("--label", default="after")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "bad_inputs.json"
    )
    args = parser.parse_args()
    code = args.code.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "tiny.yaml"
        config.write_text(yaml.safe_dump(tiny_config(work / "runs", iters=1, eval_every=1)))
        trained = _cli(code, ["train", str(config)], work)
        if trained.returncode != 0:
            raise SystemExit(f"training the checkpoint failed:\n{trained.stderr[-2000:]}")
        checkpoint = work / "runs" / "tiny" / "best.pt"
        rows = []
        for case in CASES:
            folder = work / "cases" / case.id
            folder.mkdir(parents=True)
            argv = case.make(folder, checkpoint)
            before = snapshot(folder, checkpoint)
            result = _cli(code, argv, work)
            after = snapshot(folder, checkpoint)
            ok = answered(result.returncode, result.stderr, before, after, result.stdout)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            rows.append({
                "id": case.id, "area": case.area, "exit": result.returncode, "answered": ok,
                "fragment": case.fragment in result.stderr,
                "last_line": (lines[-1] if lines else "")[:300],
            })  # fmt: skip
            print(
                f"{'yes' if ok else 'no ':<4} {result.returncode:>3}  {case.id:<34} {rows[-1]['last_line'][:90]}"
            )
    count = sum(r["answered"] for r in rows)
    print(f"{args.label}: {count} of {len(rows)} bad inputs answered in one sentence with exit 2")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = {"code": str(code), "cases": len(rows), "answered": count, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
