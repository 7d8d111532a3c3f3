"""The chain's verbs of ``samplernn-lab``: ``run``, ``batch`` and ``demo`` (their parsers and calls)."""

from __future__ import annotations

from .errors import LabError


def _add_pipeline(sub) -> None:
    """The verbs of the chain: ``run``, ``batch`` and ``demo``."""
    for verb, helptext in (
        ("run", "the notebook chain on one source: prepare, train, listen, figures"),
        ("batch", "one run per source and grid setting, locally or on Ray; summary.csv, index.html"),
    ):
        p = sub.add_parser(verb, help=helptext)
        _add_chain_options(p, verb)
        if verb == "batch":
            _add_batch_options(p)
        if verb == "run":
            p.add_argument(
                "--overwrite",
                action="store_true",
                help="replace a run that --out holds (only a folder samplernn-lab made)",
            )
            p.add_argument(
                "--resume",
                action="store_true",
                help="go on with a run that --out holds and that stopped part-way (Ctrl-C, a crash): its finished "
                "notebooks are kept, training goes on from its last checkpoint",
            )
    p = sub.add_parser("demo", help="the whole chain on the bundled example, within minutes on a CPU")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--max-minutes", type=float, default=None)
    _add_no_rescue(p)


def _add_chain_options(p, verb: str) -> None:
    """The options ``run`` and ``batch`` share: sources, preset, budgets, renders, seed, overrides."""
    p.add_argument("sources", nargs="+" if verb == "batch" else 1, metavar="SOURCE")
    p.add_argument("--out", required=verb == "run")
    p.add_argument("--preset", default="sketch")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="seconds to render per stream")
    p.add_argument("--temperature", type=float, nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE")
    _add_no_rescue(p)


def _add_no_rescue(p) -> None:
    """``--no-rescue``: leave the renders' trapped streams alone."""
    p.add_argument(
        "--no-rescue",
        dest="rescue",
        action="store_false",
        help="leave trapped streams (silent, steady tone) alone in the renders (default: re-prime them)",
    )


def _add_batch_options(p) -> None:
    """The options of ``batch`` alone: jobs, steps, the grid, Ray and its resources, retries, --status."""
    p.add_argument("--jobs", type=int, default=1, help="runs at once without --ray, sharing the CPUs (default 1)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps per run in all")
    p.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="FIELD=V1,V2",
        help="one run per source per combination of these settings' values",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: no ADDRESS starts a local instance; auto joins this machine's "
        "cluster; ray://HOST:PORT connects through Ray Client",
    )
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="GPUs Ray gives each run (default 1 where the cluster has GPUs, else 0)",
    )
    p.add_argument("--cpus-per-run", type=float, default=None, help="CPUs Ray gives each run (default 1)")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a run whose process, worker or node died is resumed (default 2)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print the table of the batch in the folder given as SOURCE, and exit",
    )


def _pipeline_kwargs(a) -> dict:
    return {
        "preset": a.preset,
        "max_minutes": a.max_minutes,
        "epochs": a.epochs,
        "seconds": a.seconds,
        "temperatures": a.temperature,
        "seed": a.seed,
        "overrides": a.set,
        "rescue": a.rescue,
    }


def _run(a) -> None:
    from .pipeline import run

    if a.resume and a.overwrite:
        raise LabError("--resume and --overwrite: choose one (--overwrite replaces the run --resume would go on with)")
    summary = run(a.sources[0], a.out, overwrite=a.overwrite, resume=a.resume, **_pipeline_kwargs(a))
    print(f"done: {summary['run']} (see summary.json, notebooks/ and figures/ there)")


def _batch(a) -> int:
    from .batch import batch, format_status, status

    if a.status:
        if len(a.sources) != 1:
            raise LabError("--status: give the batch's folder (its --out) and nothing else")
        print(format_status(status(a.sources[0])))
        return 0
    if a.out is None:
        raise LabError("--out: the batch's folder is required")
    if a.ray not in (None, "local", "auto") and ":" not in a.ray:
        raise LabError(
            f"--ray {a.ray}: expected no address, auto, HOST:PORT or ray://HOST:PORT (put --ray after the sources)"
        )
    if a.ray is None and (a.gpus_per_run is not None or a.cpus_per_run is not None):
        raise LabError("--gpus-per-run/--cpus-per-run: ask Ray for resources, so they need --ray")
    report = batch(
        a.sources,
        a.out,
        jobs=a.jobs,
        grid=a.grid,
        ray=False if a.ray is None else a.ray,
        cpus_per_run=a.cpus_per_run,
        gpus_per_run=a.gpus_per_run,
        retries=a.retries,
        max_steps=a.max_steps,
        **_pipeline_kwargs(a),
    )
    print(f"{report['ok']} runs ok, {report['failed']} failed; open {report['index']}")
    return 0 if report["failed"] == 0 else 1


def _demo(a) -> None:
    from .pipeline import demo

    demo(a.out, max_minutes=a.max_minutes, rescue=a.rescue)
