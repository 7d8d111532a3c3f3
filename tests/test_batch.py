"""batch on a local Ray instance: grids, failures reported, live status, resume after a killed worker, skips.

One Ray instance (2 CPUs, no dashboard) serves the module; batch uses it as it finds it, which is the
code path of ``--ray`` on a cluster. Models are tiny and runs a few hundred steps.
"""

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import soundfile as sf

from samplernn_lab.batch import batch, format_status, parse_grid, plan, start_local_ray, status, write_triage
from samplernn_lab.cli import main
from samplernn_lab.errors import LabError
from samplernn_lab.progress import MetricsTail
from signals import bell

TINY = ["dim=16", "embed_size=8", "chunk_seconds=0.5", "copies=2", "seq_len=256", "batch_size=4", "render_seconds=0.1"]


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(num_cpus=2, log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    sf.write(root / "a.wav", bell(16000, 2.0, seed=3), 16000, subtype="PCM_16")
    sf.write(root / "b.wav", bell(16000, 2.0, seed=8), 16000, subtype="PCM_16")
    (root / "broken.wav").write_text("not audio\n" * 50)
    return root


def test_grid_names_runs_by_source_and_setting(tmp_path, sources):
    grid = parse_grid(["lr=0.001,0.003", "quantization=linear,mulaw"])
    jobs = plan([sources / "a.wav", tmp_path / "gone.wav"], tmp_path / "out", grid)
    assert len(jobs) == 8
    assert jobs[0]["name"] == "a__lr=0.001__quantization=linear"
    assert jobs[0]["overrides"] == ["lr=0.001", "quantization=linear"]
    assert {j["grid"]["quantization"] for j in jobs} == {"linear", "mulaw"}
    assert all("no such file" in j["error"] for j in jobs if j["name"].startswith("gone"))
    for bad in (["lr"], ["lr="], ["lr=1", "lr=2"]):
        with pytest.raises(LabError, match="--grid"):
            parse_grid(bad)
    with pytest.raises(LabError, match="nonsense"):  # an unknown field fails before anything runs
        plan([sources / "a.wav"], tmp_path / "out", {"nonsense": ["1"]})


def test_triage_groups_and_sorts_by_the_grid(tmp_path):
    results = [
        {
            "name": f"s{i}__lr={lr}",
            "source": f"s{i}.wav",
            "grid": {"lr": lr},
            "status": "ok",
            "category": cat,
            "run": str(tmp_path / f"s{i}__lr={lr}"),
        }
        for i, (lr, cat) in enumerate([("0.003", "tone"), ("0.001", "varied"), ("0.003", "varied")])
    ]
    results.append({"name": "s9__lr=0.001", "source": "s9.wav", "grid": {"lr": "0.001"}, "status": "running (x)"})
    write_triage(tmp_path, results, ["lr"])
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["lr"], r["category"] or r["status"]) for r in rows] == [
        ("0.001", "varied"),
        ("0.001", "running (x)"),
        ("0.003", "varied"),
        ("0.003", "tone"),
    ]
    page = (tmp_path / "index.html").read_text()
    assert page.index("lr=0.001") < page.index("s1__lr=0.001") < page.index("lr=0.003 &nbsp;")
    assert page.count("<tbody>") == 2 and "<th>lr</th>" in page


def test_triage_sorts_a_drones_own_tone_with_the_varied_runs(tmp_path):
    results = [
        {"name": n, "source": f"{n}.wav", "status": "ok", "category": c, "run": str(tmp_path / n)} | extra
        for n, c, extra in [
            ("bells", "tone", {"source_category": "varied"}),  # the study's tone failure
            ("drone", "tone", {"source_category": "tone"}),  # the source's own kind
            ("hiss", "noise", {}),  # a run from before summaries said what the source is
            ("loop", "varied", {"source_category": "varied"}),
        ]
    ]
    write_triage(tmp_path, results)
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["name"] for r in rows] == ["drone", "loop", "hiss", "bells"]
    assert list(rows[0])[-1] == "source_category" and rows[0]["source_category"] == "tone"
    page = (tmp_path / "index.html").read_text()
    assert "<tr class='varied'><td>drone</td>" in page and "tone, as its source" in page
    assert "<tr class='tone'><td>bells</td>" in page and page.count("as its source") == 1
    # a group's heading counts it as the rows show it
    (tmp_path / "g").mkdir()
    write_triage(tmp_path / "g", [r | {"lr": "1"} for r in results], ["lr"])
    heading = (tmp_path / "g" / "index.html").read_text().split("<small>")[1].split("</small>")[0]
    assert heading.endswith("1 noise, 1 tone") and "1 tone, as its source" in heading


def test_the_batchs_bar_counts_runs_as_the_triage_page_heads_them(tmp_path):
    # one way to count: the bar over runs says what the page's group heading says, a failed run included
    from samplernn_lab.batch import _record

    class Bar:
        n, postfix = 0, ""

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def refresh(self):
            pass

    results = {
        n: {"name": n, "source": f"{n}.wav", "status": "ok", "category": c, "run": str(tmp_path / n), **extra}
        for n, c, extra in [
            ("bells", "tone", {"source_category": "varied"}),
            ("drone", "tone", {"source_category": "tone"}),
            ("loop", "varied", {"source_category": "varied"}),
        ]
    }
    results["broken"] = {"name": "broken", "source": "broken.wav", "status": "failed", "error": "unreadable"}
    bar = Bar()
    _record(tmp_path / "b", [{"name": n} for n in results], results, {}, bar, {})
    assert bar.n == 4
    assert bar.postfix == "1 tone, as its source, 1 varied, 1 tone, 1 failed"
    (tmp_path / "g").mkdir()
    write_triage(tmp_path / "g", [r | {"lr": "1"} for r in results.values()], ["lr"])
    heading = (tmp_path / "g" / "index.html").read_text().split("<small>")[1].split("</small>")[0]
    assert heading == bar.postfix


def test_ray_batch_of_a_grid_reports_a_broken_source_and_shows_status_while_running(
    local_ray, sources, tmp_path, capsys
):
    out = tmp_path / "grid"
    args = [
        "batch",
        str(sources / "a.wav"),
        str(sources / "b.wav"),
        str(sources / "broken.wav"),
        "--out",
        str(out),
        "--ray",
        "--grid",
        "lr=0.001,0.003",
        "--max-steps",
        "60",
        "--seconds",
        "0.25",
        "--set",
        *TINY,
    ]
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(args)))
    worker.start()
    table = ""
    while worker.is_alive() and "running (" not in table:
        time.sleep(0.3)
        if (out / "batch.json").exists():
            assert main(["batch", str(out), "--status"]) == 0
            table = capsys.readouterr().out
    worker.join()
    # the table while it ran: a row per run, the grid's column, a run in progress with its progress
    assert "running (" in table and table.splitlines()[0].split()[:3] == ["name", "lr", "state"]
    assert "a__lr=0.001" in table and "broken__lr=0.003" in table

    assert codes == [1]  # a run failed
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 6 and {r["lr"] for r in rows} == {"0.001", "0.003"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["name"] for r in ok) == ["a__lr=0.001", "a__lr=0.003", "b__lr=0.001", "b__lr=0.003"]
    assert all(r["category"] in ("silence", "tone", "noise", "varied") for r in ok)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 and all("not a readable audio file" in r["error"] for r in failed)
    for r in ok:
        assert json.loads((out / r["run"] / "summary.json").read_text())["steps"] == 60
        assert (out / r["figure"]).exists() and all((out / p).exists() for p in r["renders"].split())
    page = (out / "index.html").read_text()
    assert page.count("<audio") == 8 and "lr=0.001 &nbsp;" in page and "lr=0.003 &nbsp;" in page

    # started again: finished runs are skipped, nothing of theirs is rewritten; the broken source fails again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*__lr=*/**/*") if p.is_file()}
    t0 = time.perf_counter()
    report = batch(
        [sources / "a.wav", sources / "b.wav", sources / "broken.wav"],
        out,
        grid=["lr=0.001,0.003"],
        max_steps=60,
        seconds=0.25,
        overrides=TINY,
        ray=True,
        progress=False,
    )
    print(f"second start: {time.perf_counter() - t0:.1f} s")
    assert [r["status"] for r in report["results"]].count("skipped (done)") == 4 and report["failed"] == 2
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*__lr=*/**/*") if p.is_file()}
    lines = format_status(status(out)).splitlines()
    assert lines[-1] == "4 done, 2 failed"  # the broken source failed in this batch: failed, though it was before
    assert json.loads((out / "batch-driver.json").read_text())["state"] == "ended"


def test_a_killed_worker_is_retried_by_ray_and_resumes_from_its_checkpoint(local_ray, sources, tmp_path):
    out = tmp_path / "kill"
    overrides = TINY + ["checkpoint_minutes=0.002"]  # last.pt every ~0.1 s as well as every epoch
    reports = []
    worker = threading.Thread(
        target=lambda: reports.append(
            batch(
                [sources / "a.wav"],
                out,
                max_steps=400,
                seconds=0.25,
                overrides=overrides,
                ray=True,
                retries=2,
                progress=False,
            )
        )
    )
    worker.start()
    state_file, tail = out / "logs" / "a.json", MetricsTail(out / "a")
    while worker.is_alive():
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if state.get("state") == "running" and tail.read().step >= 120:
            break
        time.sleep(0.05)
    killed_at = tail.step
    os.kill(state["pid"], signal.SIGKILL)  # the Ray worker running the task, mid-training
    worker.join()

    (report,) = reports
    assert report["ok"] == 1, report["results"]
    assert json.loads(state_file.read_text())["attempt"] == 2  # Ray ran the task again
    steps = [
        json.loads(line)["step"]
        for line in (out / "a" / "metrics.jsonl").read_text().splitlines()
        if '"split": "train"' in line
    ]
    # resumed, not restarted: training never went back to its first step; the steps done again after
    # the kill (those after the last checkpoint, plus what the kernel did in the second it outlived its
    # worker) are fewer than those done before it
    assert steps.count(1) == 1 and killed_at >= 120
    redone = sum(steps[i - 1] - steps[i] + 1 for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert redone < killed_at, (redone, killed_at)
    assert steps[-1] == 400 and json.loads((out / "a" / "summary.json").read_text())["steps"] == 400
    assert "--- attempt 2" in (out / "logs" / "a.log").read_text()


def test_batch_cli_refuses_mistakes(tmp_path, capsys):
    assert main(["batch", str(tmp_path), "--status"]) == 2
    assert "no batch here" in capsys.readouterr().err
    assert main(["batch", "x.wav"]) == 2 and "--out" in capsys.readouterr().err
    assert main(["batch", "x.wav", "--out", str(tmp_path), "--cpus-per-run", "2"]) == 2
    assert "need --ray" in capsys.readouterr().err
    assert main(["batch", "x.wav", "--ray", "y.wav", "--out", str(tmp_path)]) == 2
    assert "put --ray after the sources" in capsys.readouterr().err


def test_a_folder_the_lab_did_not_make_is_left_alone(tmp_path, sources):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "mine.txt").write_text("keep me")
    report = batch([sources / "a.wav"], out, max_steps=5, overrides=TINY, progress=False)
    assert report["failed"] == 1 and "did not make" in report["results"][0]["error"]
    assert (out / "a" / "mine.txt").read_text() == "keep me" and sorted(os.listdir(out / "a")) == ["mine.txt"]
    assert Path(report["csv"]).exists()


def test_run_names_never_repeat_so_every_source_gets_its_own_run():
    from samplernn_lab.batch import _unique_names

    files = [Path("x/take-2.wav"), Path("x/take.flac"), Path("x/take.wav"), Path("y/take.wav")]
    assert _unique_names(files) == ["take-2", "take", "take-3", "take-4"]
    assert _unique_names([Path("a.wav"), Path("a.flac")]) == ["a", "a-2"]


@pytest.mark.parametrize("other", ["source", "seed", "preset", "spelling", None])
def test_a_finished_run_of_another_source_or_settings_is_reported_not_taken_as_done(tmp_path, sources, other):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    # a run a batch finished before: of another recording called a.wav, or with another seed or preset
    source, overrides = str((sources / "a.wav").resolve()), [*TINY, "train.max_steps=5"]  # as the batch plans it
    marker = {"name": "a", "source": source, "grid": {}, "overrides": overrides, "preset": "sketch", "seed": 0}
    if other == "seed":
        marker["seed"] = 7
    if other == "source":
        marker["source"] = str(tmp_path / "elsewhere" / "a.wav")
    if other == "preset":
        marker["preset"] = "poster"
    if other == "spelling":  # the same settings in another order, and another budget: the same run, as run --resume
        marker["overrides"] = [*reversed(TINY), "max_steps=3"]
    (out / "a" / "batch-run.json").write_text(json.dumps(marker))
    (out / "a" / "summary.json").write_text(json.dumps({"best_val_bits": 1.0, "renders": []}))
    report = batch([sources / "a.wav"], out, max_steps=5, overrides=TINY, progress=False)
    (result,) = report["results"]
    if other in (None, "spelling"):  # this job's own finished run
        assert result["status"] == "skipped (done)", result
    else:  # the refusal names what differs
        named = {"source": "source a.wav", "seed": "seed 7 (0 given now)", "preset": "model.n_rnn=2 (1 given now)"}
        assert result["status"] == "failed" and named[other] in result["error"], result
    assert json.loads((out / "a" / "summary.json").read_text())["best_val_bits"] == 1.0  # left alone


def test_triage_page_links_names_with_spaces_and_hashes(tmp_path):
    out = tmp_path / "tri"
    results = {}
    for name in ("my song", "Track #3"):
        run = out / name
        (run / "renders" / "listen").mkdir(parents=True)
        (run / "renders" / "listen" / "t1.0-0.wav").write_bytes(b"")
        results[name] = {
            "name": name,
            "source": f"{name}.wav",
            "grid": {},
            "status": "ok",
            "run": str(run),
            "category": "varied",
            "renders": [{"file": "renders/listen/t1.0-0.wav", "category": "varied"}],
            "figures": ["figures/poster.png"],
        }
    write_triage(out, list(results.values()))
    page = (out / "index.html").read_text()
    assert "src='my%20song/renders/listen/t1.0-0.wav'" in page
    assert "src='Track%20%233/renders/listen/t1.0-0.wav'" in page and "href='Track%20%233/figures/poster.png'" in page
    assert page.count("<audio") == 2
    rows = {r["name"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["my song"]["renders"] == "my song/renders/listen/t1.0-0.wav"


@pytest.mark.parametrize("code", [130, -signal.SIGINT, 1])
def test_a_local_run_stopped_by_ctrl_c_is_not_started_again(tmp_path, monkeypatch, code):
    """Ctrl-C reaches every run of a local batch: an interrupted run is reported, not restarted ``retries`` times
    (each restart went on training until Ctrl-C was pressed again); a run that died (exit 1) is retried."""
    from samplernn_lab import batch_runners

    calls = []

    class Exits:  # the run's process, exiting with `code`
        def __init__(self, args, **kwargs):
            calls.append(args)

        def wait(self):
            return code

    monkeypatch.setattr(batch_runners.subprocess, "Popen", Exits)
    runner = batch_runners._Local(jobs=1, retries=2)
    runner.submit({"name": "a", "run": str(tmp_path / "a")}, {})
    (result,) = runner.done(timeout=30)
    runner.close()
    assert result["status"] == "failed"
    if code == 1:
        assert len(calls) == 3 and "died" in result["error"]
    else:
        assert len(calls) == 1 and "interrupted" in result["error"]


def test_metrics_tail_reads_what_was_appended_and_waits_for_a_half_written_line(tmp_path):
    tail = MetricsTail(tmp_path)
    assert tail.read().line() == "preparing" and not tail.started
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.write('{"step": 1, "epoch": 1, "split": "train", "nll_bits": 8.0, "seconds": 6}\n')
        fh.write('{"step": 2, "epoch": 1, "split": "train", "nll_bits": 6.0, "seconds": 12}\n{"step": 3, "ep')
    assert tail.read().step == 2 and tail.epoch == 0 and abs(tail.bits - 7.8) < 1e-9
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('och": 1, "split": "train", "nll_bits": 5.0, "seconds": 18}\n')
        fh.write('{"step": 3, "epoch": 1, "split": "val", "nll_bits": 5.5, "seconds": 24}\n')
    assert tail.read().step == 3 and tail.epoch == 1 and tail.val_bits == 5.5
    assert tail.line() == "epoch 1, step 3, 7.52 bits, 0.4 min"


def test_metrics_tail_follows_a_run_that_started_over(tmp_path):
    """A run stopped before its first checkpoint starts its metrics.jsonl again when resumed (a batch's retry or
    restart); a tail kept from before used to go on showing the old steps until the new file outgrew them."""
    line = '{{"step": {0}, "epoch": {1}, "split": "train", "nll_bits": 5.0, "seconds": {0}}}\n'
    (tmp_path / "metrics.jsonl").write_text("".join(line.format(s, 2) for s in range(1, 41)))
    tail = MetricsTail(tmp_path)
    assert tail.read().step == 40 and tail.epoch == 1
    (tmp_path / "metrics.jsonl").unlink()  # the run starts over
    assert not tail.read().started and tail.step == 0 and tail.line() == "preparing"
    (tmp_path / "metrics.jsonl").write_text(line.format(1, 1) + line.format(2, 1))
    assert tail.read().step == 2 and tail.epoch == 0
    (tmp_path / "metrics.jsonl").write_text(line.format(1, 1))  # started over again between two looks: shorter
    assert tail.read().step == 1 and tail.reader.restarts == 2
    os.replace(tmp_path / "metrics.jsonl", tmp_path / "old.jsonl")  # or another file in its place, as long
    (tmp_path / "metrics.jsonl").write_text("".join(line.format(s, 1) for s in range(5, 9)))
    assert tail.read().step == 8 and tail.reader.restarts == 3


def test_batch_shares_every_setting_of_a_run_with_its_defaults(tmp_path):
    # one place holds a run's settings and their defaults (pipeline.run); batch forwards them, checked by name
    import inspect

    from samplernn_lab.batch import shared_options
    from samplernn_lab.pipeline import run

    options = shared_options({"checkpoint": "last", "temperatures": (0.9, 1.0), "overrides": ("lr=0.002",)})
    assert options["checkpoint"] == "last" and options["temperatures"] == [0.9, 1.0]
    assert options["overrides"] == ["lr=0.002"]
    defaults = inspect.signature(run).parameters
    assert options["preset"] == defaults["preset"].default and options["rescue"] == defaults["rescue"].default
    assert not {"source", "out", "resume", "overwrite", "progress"} & set(options)
    with pytest.raises(LabError, match="checkpont: not a setting of a run"):
        batch([tmp_path / "a.wav"], tmp_path / "out", checkpont="last")
    assert not (tmp_path / "out").exists()  # refused before anything is made


def test_status_of_a_moved_batch_and_of_a_run_whose_process_is_gone(tmp_path):
    """``--status`` reads the runs where the batch's folder is now, and a run recorded as running whose process
    on this machine is gone (Ctrl-C, kill -9) is stopped, not running for ever."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "moved"
    jobs = [{"name": n, "run": str(tmp_path / "before" / n), "grid": {}} for n in ("done", "killed")]
    (out / "logs").mkdir(parents=True)
    (out / "batch.json").write_text(json.dumps({"jobs": jobs}))
    (out / "done").mkdir()
    done = {"best_val_bits": 4.2, "renders": [], "category": "tone", "source_category": "tone"}  # a drone's tone
    (out / "done" / "summary.json").write_text(json.dumps(done))
    (out / "killed").mkdir()
    (out / "killed" / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "split": "train", "nll_bits": 5.0}\n')
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = {"state": "running", "pid": int(dead.stdout), "host": socket.gethostname()}
    (out / "logs" / "killed.json").write_text(json.dumps(state))
    rows = {r["name"]: r for r in status(out)}
    assert rows["done"]["state"] == "done" and rows["done"]["best_val_bits"] == 4.2
    assert rows["done"]["category"] == "tone, as its source"  # as the triage page shows it, not the tone failure
    assert rows["killed"]["state"].startswith("stopped"), rows["killed"]
    state["pid"] = os.getpid()  # alive: running
    (out / "logs" / "killed.json").write_text(json.dumps(state))
    assert status(out)[1]["state"].startswith("running")


def test_a_restarted_batch_shows_runs_it_queued_again_as_waiting_not_as_they_ended_before(tmp_path):
    """A batch started again queues the runs an earlier one stopped or saw fail; its live table and page said
    "stopped" / "failed" for them until they started. Now: waiting to resume (with where it stopped), or
    waiting; a running run shows its progress."""
    import socket
    import subprocess
    import sys

    from samplernn_lab.batch_state import pending_row

    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    names = ("stop", "fail", "run", "new", "killed")
    jobs = {n: {"name": n, "run": str(out / n), "grid": {}, "source": f"{n}.wav"} for n in names}
    for name, state in (("stop", "stopped"), ("fail", "failed"), ("run", "running")):
        (out / "logs" / f"{name}.json").write_text(json.dumps({"state": state, "error": "bad"}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = {"state": "running", "pid": int(dead.stdout), "host": socket.gethostname()}  # kill -9: no one wrote
    (out / "logs" / "killed.json").write_text(json.dumps(killed))
    for name in ("stop", "run", "killed"):
        (out / name).mkdir()
        (out / name / "metrics.jsonl").write_text('{"step": 40, "epoch": 3, "split": "train", "nll_bits": 5.0}\n')
    rows = {n: pending_row(j, out) for n, j in jobs.items()}
    assert rows["stop"]["status"].startswith("waiting to resume (") and "40" in rows["stop"]["status"], rows["stop"]
    assert rows["fail"]["status"] == "waiting" and rows["new"]["status"] == "waiting"
    assert rows["run"]["status"].startswith("running (")
    assert rows["killed"]["status"].startswith("waiting to resume ("), rows["killed"]
    write_triage(out, list(rows.values()))
    page = {r["name"]: r["status"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert not any(v.startswith(("stopped", "failed")) for v in page.values()), page


def test_status_while_a_restarted_batch_runs_shows_the_runs_it_queued_again_as_waiting(tmp_path):
    """``batch OUT --status``, from another process, said "stopped" / "failed" for the runs a restarted batch had
    queued again (only the batch's own table knew better): the batch now records its process in
    batch-driver.json. A failure in this batch stays failed; with no batch running, runs are as they ended."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    names = ("stop", "fail_before", "fail_now", "new")
    jobs = [{"name": n, "run": str(out / n), "grid": {}, "source": f"{n}.wav"} for n in names]
    (out / "batch.json").write_text(json.dumps({"jobs": jobs}))
    for name, state in (
        ("stop", {"state": "stopped", "batch": "old"}),
        ("fail_before", {"state": "failed", "error": "died", "batch": "old"}),
        ("fail_now", {"state": "failed", "error": "no such file", "batch": "this"}),
    ):
        (out / "logs" / f"{name}.json").write_text(json.dumps(state))
    (out / "stop").mkdir()
    (out / "stop" / "metrics.jsonl").write_text('{"step": 40, "epoch": 3, "split": "train", "nll_bits": 5.0}\n')

    def states(driver: dict | None) -> dict:
        if driver is not None:
            (out / "batch-driver.json").write_text(json.dumps(driver))
        return {r["name"]: r["state"] for r in status(out)}

    before = states(None)  # no batch has run here with this version: as they ended
    assert before["stop"].startswith("stopped (") and before["fail_before"] == before["fail_now"] == "failed"
    here = {"batch": "this", "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    live = states({**here, "state": "running", "seen": time.time()})
    assert live["stop"].startswith("waiting to resume (") and "40" in live["stop"], live
    assert live["fail_before"] == "waiting" and live["new"] == "waiting" and live["fail_now"] == "failed"
    assert states({**here, "state": "ended"}) == before
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert states({**here, "pid": int(dead.stdout), "state": "running"}) == before  # the batch killed with -9
    far = {**here, "host": "another-host", "state": "running"}  # not this machine's to check: its heartbeat tells
    assert states({**far, "seen": time.time()}) == live
    assert states({**far, "seen": time.time() - 600}) == before


def test_a_batch_records_itself_and_the_failures_its_runner_saw_and_refuses_to_run_twice(tmp_path, monkeypatch):
    """A run whose process died more often than ``retries`` could not say so in its state file (it still said
    running, or an earlier batch's words): the batch writes "failed" there, as its table says, so --status agrees.
    A second batch started on a folder where one runs now is refused, and the first batch's record is kept."""
    from samplernn_lab import batch_runners

    src = tmp_path / "a.wav"
    sf.write(src, bell(16000, 1.0), 16000)
    out = tmp_path / "out"
    seen = {}

    class Dies:  # the run's process: writes "running" as run_one does, then is killed (-9)
        def __init__(self, args, **kwargs):
            spec = json.loads(Path(args[-1]).read_text())
            state = {**spec["job"], "state": "running", "pid": 999999999, "host": "elsewhere"}
            (out / "logs" / "a.json").write_text(json.dumps(state))
            seen["driver"] = json.loads((out / "batch-driver.json").read_text())
            with pytest.raises(LabError, match="another batch runs here"):  # meanwhile a second batch, same folder
                batch([src], out, max_steps=5, overrides=TINY, progress=False)

        def wait(self):
            return -9

    monkeypatch.setattr(batch_runners.subprocess, "Popen", Dies)
    report = batch([src], out, max_steps=5, overrides=TINY, progress=False, retries=1)
    assert report["failed"] == 1 and "died" in report["results"][0]["error"]
    assert seen["driver"]["state"] == "running" and seen["driver"]["pid"] == os.getpid()
    state = json.loads((out / "logs" / "a.json").read_text())
    assert state["state"] == "failed" and state["batch"] == seen["driver"]["batch"]
    driver = json.loads((out / "batch-driver.json").read_text())
    assert driver["state"] == "ended" and driver["batch"] == seen["driver"]["batch"]
    assert status(out)[0]["state"] == "failed"
    (out / "batch-driver.json").write_text(json.dumps({**driver, "state": "running", "seen": time.time()}))
    assert status(out)[0]["state"] == "failed"  # failed in this batch: not queued again while it runs


def _runner_with_a_started_run(tmp_path, monkeypatch, on_sigterm: str, grace: float, retries: int):
    """A local runner whose one run's process handles SIGTERM with ``on_sigterm`` (Python source), has started,
    and then sleeps "for ever"; returns the runner and that process."""
    from samplernn_lab import batch_runners

    started = tmp_path / "started"
    body = (
        f"import signal, sys, time; signal.signal(signal.SIGTERM, {on_sigterm}); "
        f"open({str(started)!r}, 'w').close(); time.sleep(120)"
    )
    monkeypatch.setattr(batch_runners, "run_command", lambda spec: [sys.executable, "-c", body])
    monkeypatch.setattr(batch_runners, "STOP_GRACE_SECONDS", grace)
    runner = batch_runners._Local(jobs=1, retries=retries)
    runner.submit({"name": "a", "run": str(tmp_path / "a")}, {})
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (proc,) = runner.procs
    return runner, proc


def test_a_batch_sent_sigterm_stops_its_runs_instead_of_orphaning_them(tmp_path, monkeypatch):
    """``kill PID`` of a local batch ended it at once while its run processes trained on, orphaned. Now SIGTERM is
    an exit the batch handles, and closing its runner stops (SIGTERM) the runs still going."""
    from samplernn_lab import batch as batch_mod

    # a run's process as _worker_main is: SIGTERM exits 143
    runner, proc = _runner_with_a_started_run(tmp_path, monkeypatch, "lambda *_: sys.exit(143)", 1.0, 2)
    t = time.monotonic()
    runner.close()  # what the batch's `finally` does on Ctrl-C, an error, or now SIGTERM
    assert 1.0 <= time.monotonic() - t < 30 and proc.returncode == 143  # given its grace, then stopped
    (result,) = [runner._pop(f) for f in list(runner.futures)]
    assert result["status"] == "failed" and "interrupted (exit 143)" in result["error"]  # and not started again
    assert runner.procs == set()
    # the batch's process: SIGTERM is an exit inside the batch (its `finally` runs), its own handler outside; a
    # second SIGTERM while it stops its runs is ignored (it would abandon them half-stopped)
    before, cleaned = signal.getsignal(signal.SIGTERM), False
    with pytest.raises(SystemExit) as stop, batch_mod._sigterm_exits():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            cleaned = True
    assert stop.value.code == 143 and cleaned and signal.getsignal(signal.SIGTERM) is before


def test_closing_a_batch_kills_a_run_that_ignores_sigterm(tmp_path, monkeypatch):
    runner, proc = _runner_with_a_started_run(tmp_path, monkeypatch, "signal.SIG_IGN", 0.5, 0)
    t = time.monotonic()
    runner.close()
    assert 1.0 <= time.monotonic() - t < 30 and proc.returncode == -signal.SIGKILL
    (result,) = [runner._pop(f) for f in list(runner.futures)]
    assert result["status"] == "failed" and "interrupted" in result["error"]


def test_a_run_stopped_by_ctrl_c_says_stopped_in_its_state_file(tmp_path, monkeypatch):
    """Ctrl-C in a run's process used to leave its state file saying "running" for ever (only this machine could
    tell from the dead pid); now the file says stopped, and the interrupt goes on up."""
    from samplernn_lab import batch as batch_mod
    from samplernn_lab import pipeline

    sf.write(tmp_path / "a.wav", bell(16000, 1.0), 16000)
    out = tmp_path / "out"
    (job,) = plan([tmp_path / "a.wav"], out)
    (out / "batch.json").parent.mkdir(parents=True)
    (out / "batch.json").write_text(json.dumps({"jobs": [job]}))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch_mod.run_one(job, {})
    state = json.loads((out / "logs" / "a.json").read_text())
    assert state["state"] == "stopped" and state["attempt"] == 1
    (Path(job["run"]) / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "split": "train", "nll_bits": 5.0}\n')
    assert status(out)[0]["state"].startswith("stopped")
    # SIGTERM to a local run's process too (it used to end the process before anything was written)
    spec = tmp_path / "a.job.json"
    spec.write_text(json.dumps({"job": job, "options": {}}))
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(30))
    before = signal.getsignal(signal.SIGTERM)

    def unhandled(*_):  # what the test's own process gets if _worker_main left SIGTERM alone: a failure, not death
        raise AssertionError("_worker_main did not take SIGTERM")

    signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(SystemExit) as stop:
            batch_mod._worker_main(str(spec))
    finally:
        signal.signal(signal.SIGTERM, before)
    state = json.loads((out / "logs" / "a.json").read_text())
    assert stop.value.code == 143 and state["state"] == "stopped" and state["attempt"] == 2


def test_local_runs_share_the_cores_instead_of_each_taking_all(tmp_path, monkeypatch):
    """``jobs`` runs at once get the CPUs between them as torch threads (each taking every core, two runs on
    two cores took 37x the time a step); one run keeps torch's default; a thread count the user set is kept."""
    from samplernn_lab import batch_runners

    envs = []

    class Exits:  # the run's process: records its environment, then reports itself interrupted (no retry)
        def __init__(self, args, **kwargs):
            envs.append(kwargs["env"])

        def wait(self):
            return 130

    monkeypatch.setattr(batch_runners.subprocess, "Popen", Exits)
    monkeypatch.setattr(batch_runners, "usable_cpus", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for jobs, threads in [(1, None), (2, "2"), (3, "1"), (8, "1")]:
        runner = batch_runners._Local(jobs=jobs, retries=0)
        runner.submit({"name": f"j{jobs}", "run": str(tmp_path / f"j{jobs}")}, {})
        runner.done(timeout=30)
        runner.close()
        assert envs[-1].get("OMP_NUM_THREADS") == threads and envs[-1]["TQDM_DISABLE"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert batch_runners.run_env(2)["OMP_NUM_THREADS"] == "3"
