"""Run by tests/test_help.py in one fresh interpreter: every script's `--help`, in turn, as `python SCRIPT --help`
would run it (`__main__`, the script's folder first on sys.path), with the working directory an empty folder. Writes
per script: the exit status, the captured stdout's head, the seconds it took and the files that appeared.

    python tests/help_child.py RESULT_JSON SCRIPT...

One interpreter for all: torch and transformers are imported once (about 3 s each time otherwise), so the test
costs seconds while still executing each script's own top level and argument parsing.
"""

import contextlib
import io
import json
import os
import runpy
import sys
import time
from pathlib import Path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_help(script: str) -> dict:
    """`python SCRIPT --help` in-process: the exit status (argparse's SystemExit), stdout and the elapsed time."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, "--help"]
    sys.path.insert(0, str(Path(script).parent))
    stdout, status = io.StringIO(), 0
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()) as stderr:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException as error:  # noqa: BLE001  (reported to the parent test, which names it)
        status, stderr = 1, io.StringIO(f"{type(error).__name__}: {error}")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return {
        "status": status,
        "seconds": time.perf_counter() - start,
        "stdout": stdout.getvalue()[:2000],
        "stderr": stderr.getvalue()[-2000:],
    }


def main(result_path: str, *scripts: str) -> None:
    import torch
    import transformers  # noqa: F401  (imported once, before the clock of the first script starts)

    import hf_mim  # noqa: F401

    torch.set_num_threads(1)
    results = {}
    workdir = Path.cwd()
    for script in scripts:
        before = files_under(workdir)
        results[script] = run_help(script)
        os.chdir(workdir)  # a script that changed folders must not move the next one
        results[script]["new_files"] = sorted(set(files_under(workdir)) - set(before))
    Path(result_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
