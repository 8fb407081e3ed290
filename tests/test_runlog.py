"""lever_lm.runlog.script_logging: a user-input error is one line on the terminal, a bug keeps its traceback;
both tracebacks go to the rule's log file."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _job(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "job.log"
    lines = [
        "import logging",
        "from lever_lm.runlog import script_logging",
        f"with script_logging({str(log)!r}, 'records') as log:",
        "    log.info('working')",
        "    logging.getLogger('faiss.loader').info('Could not load library with AVX512 support')",
        *("    " + line for line in textwrap.dedent(body).strip().splitlines()),
    ]
    script = "\n".join(lines)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    return result, log.read_text()


def test_input_error_is_one_line_and_the_traceback_stays_in_the_log(tmp_path):
    result, log = _job(
        tmp_path,
        """
        from lever_lm.data import DatasetError
        try:
            raise KeyError("inner")
        except KeyError:
            raise DatasetError("q.json: 2 duplicate question_id(s): question_id 5,\\n  question_id 7")
    """,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "DatasetError in records: q.json: 2 duplicate question_id(s): question_id 5,; question_id 7"
    )
    assert "Traceback" not in result.stderr and "failed after" not in result.stderr
    assert "working" in result.stderr and "AVX512" not in result.stderr + log  # faiss's loader chatter is silenced
    assert "Traceback" in log and "KeyError: 'inner'" in log and "question_id 7" in log


def test_a_bug_keeps_its_traceback_once(tmp_path):
    result, log = _job(
        tmp_path,
        """
        raise ZeroDivisionError("a bug")
    """,
    )
    assert result.returncode == 1
    assert result.stderr.count("Traceback") == 1 and "ZeroDivisionError: a bug" in result.stderr
    assert "Traceback" in log and "ZeroDivisionError: a bug" in log


def test_a_job_collects_garbage_rarely_and_freezes_its_objects_at_the_end(tmp_path):
    """Inside the job the young-generation threshold is JOB_GC_THRESHOLD (cycles are still collected); after it,
    the threshold is back and every object is frozen, so the interpreter's exit does not traverse them again."""
    script = "\n".join(
        [
            "import gc",
            "from lever_lm.runlog import JOB_GC_THRESHOLD, script_logging",
            "default = gc.get_threshold()",
            f"with script_logging({str(tmp_path / 'job.log')!r}, 'records'):",
            "    assert gc.get_threshold()[0] == JOB_GC_THRESHOLD > default[0]",
            "    class Cycle: pass",
            "    a = Cycle(); a.me = a; del a",
            "    assert gc.collect() > 0  # a cycle made in the job is still collected",
            "    assert gc.get_freeze_count() == 0",
            "assert gc.get_threshold() == default and gc.get_freeze_count() > 1000",
            "print('ok')",
        ]
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
