"""The ``harness`` command line. Heavy libraries load only inside commands that need them."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import click

from harness.errors import UserError
from harness.version import __version__

EXIT_USER_ERROR = 2
#: a path argument, looked at by the harness itself: click's own check of an unreadable
#: file would print its usage and a multi-line error instead of the harness's one line
PATH = click.Path(path_type=Path, readable=False)
#: a run that did not finish: a cell failed, or something stopped it (``harness gate`` has
#: its own statuses)
EXIT_FAILED = 1
#: Ctrl-C (128 + SIGINT, as shells report it), apart from a failed cell's 1
EXIT_INTERRUPTED = 130


class _Command(click.Group):
    """Turns :class:`UserError` into one line per problem on stderr and exit status 2, and
    Ctrl-C into one line and status 130 (click's own "Aborted!" exits 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            for line in exc.lines or [str(exc)]:
                click.echo(f"harness: error: {line}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("harness: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Command)
@click.version_option(__version__, prog_name="harness")
def main() -> None:
    """Tune language models with every method, evaluate the base and every variant
    alike, and keep it all in DuckDB: what did tuning cost?"""


@main.command()
@click.argument("suite", type=PATH)
@click.option("--progress/--no-progress", default=None,
              help="Show progress bars (default: when writing to a terminal).")
def run(suite: Path, progress: bool | None) -> None:
    """Run SUITE: tune, evaluate and store every cell not already in the store."""
    # tqdm reads this when first imported: the libraries' own bars would fight with ours
    os.environ.setdefault("TQDM_DISABLE", "1")
    from rich.console import Console

    from harness.runner import run_suite

    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        summary = run_suite(suite, console=console,
                            show_progress=console.is_terminal if progress is None else progress)
    except KeyboardInterrupt:  # the store marks the run 'interrupted'
        click.echo("harness: interrupted: the cells finished so far are stored; run the suite "
                   "again to finish it", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:  # harness never exits inside a run: a plugin did
        click.echo(f"harness: error: the run stopped before it finished: SystemExit({exc.code!r}) "
                   "raised outside a cell (a plugin must not end the process)", err=True)
        sys.exit(EXIT_FAILED)
    if summary.failed:
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("suite", type=PATH)
def validate(suite: Path) -> None:
    """Check SUITE (syntax, fields, plugin names, options, data files) without running it."""
    from harness.plugins import PluginHost
    from harness.suite import load_suite

    loaded = load_suite(suite, PluginHost.load())
    variants = loaded.variants_per_model
    cells = len(loaded.models) * loaded.cells_per_model
    makers = f"{len(loaded.tuners)} tuner(s)" + (
        f" and {len(loaded.transforms)} transform(s)" if loaded.transforms else "")
    click.echo(
        f"{suite}: ok - {len(loaded.models)} model(s) x (base + {variants - 1} variant(s) from "
        f"{makers}) x {len(loaded.evaluators)} evaluator(s) = {cells} "
        f"cells; store {loaded.store_path}"
    )


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(show_all: bool, as_json: bool) -> None:
    """List plugins, their versions, hooks, components and load errors."""
    from harness.plugins import PluginHost

    host = PluginHost.load()
    infos = [i for i in host.plugins() if show_all or not i.builtin]
    components = {
        kind: {name: reg.plugin for name, reg in sorted(regs.items())}
        for kind, regs in host.registry(check=False).items()
    }
    if as_json:
        click.echo(json.dumps({"plugins": [i.as_dict() for i in infos],
                               "components": components}, indent=2))
        host.registry()
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Plugins" + ("" if show_all else " (third-party; --all adds built-ins)"),
                  title_justify="left")
    for column in ("name", "distribution", "version", "hooks", "components", "error"):
        table.add_column(column)
    for info in infos:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.components.items())
        table.add_row(info.name, info.distribution or "", info.version or "",
                      ", ".join(info.hooks), registered, info.error or "")
    if infos:
        console.print(table)
    else:
        console.print("No third-party plugins installed (--all lists the built-ins).")
    summary = Table(title="Components", title_justify="left")
    summary.add_column("kind")
    summary.add_column("names")
    for kind, names in components.items():
        summary.add_row(kind, ", ".join(names))
    console.print(summary)
    host.registry()  # after listing: a duplicate name still makes the exit status 2


def _default_store() -> Path:
    """``HARNESS_STORE``, else the newest ``results/*.duckdb`` under the current folder."""
    if os.environ.get("HARNESS_STORE"):
        return Path(os.environ["HARNESS_STORE"])
    candidates = sorted(Path("results").glob("*.duckdb"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError("no store given and none found in results/ (use --store or --suite)")
    return candidates[-1]


def _suite_store(suite: Path) -> tuple[Path, str]:
    """A suite file's store and suite name, read from its [suite] table alone."""
    from harness.suite_file import read_toml, store_path

    raw = read_toml(suite).get("suite", {})
    name = raw.get("name", "suite")
    return store_path(suite, name, raw.get("store")), name


def _store_for(store: Path | None, suite: Path | None) -> Path:
    if store is None and suite is not None:
        store = _suite_store(suite)[0]
    return store or _default_store()


@main.command()
@click.option("--store", type=PATH, help="DuckDB file to export.")
@click.option("--suite", type=PATH, help="Export this suite's store.")
@click.option("--out", type=PATH, required=True,
              help="Folder for the Parquet files (created if missing).")
def export(store: Path | None, suite: Path | None, out: Path) -> None:
    """Write every table and view of a store as Parquet, one file each, for other tools."""
    from harness.store import export_parquet

    files = export_parquet(_store_for(store, suite), out)
    click.echo(f"{len(files)} files written to {out}: " + ", ".join(f.name for f in files))


@main.command()
@click.argument("source", type=PATH)
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html",
              help="html: one self-contained page; md: Markdown with SVG plots beside it.")
@click.option("--out", type=PATH,
              help="Where to write it (default: beside the store, <store>.report.html|md).")
@click.option("--name", help="The suite to report, when the store holds several.")
def report(source: Path, fmt: str, out: Path | None, name: str | None) -> None:
    """Write a report of SOURCE (a suite file or a store): leaderboard, lineage, sweep and
    seed tables, forgetting against the base and the parent, the gate, learning versus
    forgetting, training curves, contamination and clean scores."""
    from rich.console import Console

    from harness.plugins import PluginHost
    from harness.records import ReportContext
    from harness.store import Store, lock_timeout_from_env
    from harness.store_location import store_problem

    store = source
    if source.suffix != ".duckdb":
        store, suite_name = _suite_store(source)
        name = name or suite_name
    problem = store_problem(store, write=False)  # missing, or not a store at all
    if problem:
        raise UserError(f"{store}: {problem}")
    Store(store, lock_timeout_from_env()).ensure_current()  # views of an older harness
    # the reporters registered as "html" and "markdown", asked for by name
    reporter = PluginHost.load().build("reporter", "html" if fmt == "html" else "markdown",
                                       {"out": str(out) if out else None, "suite": name})
    reporter.report(ReportContext(store, None, name or "", Console()))


@main.command()
@click.argument("statement")
@click.option("--store", type=PATH, help="DuckDB file to query.")
@click.option("--suite", type=PATH, help="Query this suite's store.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
def sql(statement: str, store: Path | None, suite: Path | None, fmt: str) -> None:
    """Run a read-only SQL STATEMENT on a store (tables, and views such as forgetting)."""
    from harness.store import query

    store = _store_for(store, suite)
    columns, rows = query(store, statement)
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, row)) for row in rows], default=str, indent=2))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.console import Console

        from harness.display import render_table

        # the store's path on a line of its own, never wrapped (a table title would be
        # wrapped to the table's width, mid-word)
        console = Console()
        console.print(str(store), soft_wrap=True, markup=False, highlight=False)
        console.print(render_table("", columns, rows))


#: ``harness gate``'s exit status per decision (a user error is 2)
GATE_EXIT = {"GO": 0, "NO-GO": 1, "INCONCLUSIVE": 3}


@main.command()
@click.argument("source", type=PATH)
@click.option("--variant", "variants", multiple=True,
              help="Judge this variant only (repeatable); default: every tuned variant.")
@click.option("--name", help="The suite to judge, when a store holds several.")
def gate(source: Path, variants: tuple[str, ...], name: str | None) -> None:
    """May each variant ship? Prints the gate's decision per variant and evaluator for
    SOURCE (a suite file: decided now with its [gate]; a store: as the last run decided).
    Exit status: 0 when every variant judged is GO, 1 when any is NO-GO, 3 when any is
    INCONCLUSIVE and none is NO-GO (2: bad input)."""
    from rich.console import Console

    from harness.analysis.findings import gate_decisions, gate_verdicts, read_gate
    from harness.models import resolve_evaluator_models, resolve_suite_models
    from harness.plan import make_plan
    from harness.plugins import PluginHost
    from harness.store import Store, lock_timeout_from_env, read_store
    from harness.suite import load_suite

    suite = None
    if source.suffix == ".duckdb":
        store = source
    else:  # decided now, with this suite's [gate], on the cells it plans today
        host = PluginHost.load()
        suite = load_suite(source, host)
        if name is not None and name != suite.name:
            raise UserError(f"--name {name!r}: the suite file {source} is suite "
                            f"{suite.name!r}; --name chooses among a store's suites")
        store, name = suite.store_path, suite.name
    if not store.exists():
        raise UserError(f"{store}: no such store (run the suite first)")
    Store(store, lock_timeout_from_env()).ensure_current()  # views of an older harness
    with read_store(store) as con:
        suites = [r[0] for r in con.execute(
            "SELECT DISTINCT suite FROM cells ORDER BY suite").fetchall()]
        if not suites:  # as the report says it
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
            raise UserError(f"{store}: holds no runs yet (run a suite into it first)"
                            if not runs else f"{store}: holds no cells yet ({runs} run(s) "
                            "finished none)")
        if suite is None and name is None and len(suites) != 1:
            raise UserError(f"{store}: holds suites {', '.join(suites) or '(none)'}; "
                            "choose one with --name")
        name = name or suites[0]
        if suite is None and name not in suites:
            raise UserError(f"{store}: no suite named {name!r} (suites: {', '.join(suites)})")
        if suite is not None:
            models = resolve_suite_models(suite, host)
            plan = make_plan(suite, models, resolve_evaluator_models(suite, host))
            rows = gate_decisions(con, name, suite.gate, plan.cells)
        else:
            rows = read_gate(con, name)
            if not rows:
                click.echo(f"{store}: no gate decisions recorded for suite {name!r} (run it "
                           "with this harness, or give the suite file)")
                sys.exit(GATE_EXIT["INCONCLUSIVE"])
    verdicts = gate_verdicts(rows)
    known = sorted({variant for _, variant in verdicts})
    for wanted in variants:
        if wanted not in known:
            raise UserError(f"--variant {wanted!r}: no such variant in suite {name!r} "
                            f"(variants: {', '.join(known) or 'none'})")
    if variants:
        verdicts = {k: v for k, v in verdicts.items() if k[1] in variants}
        rows = [r for r in rows if r.variant in variants]
    console = Console()
    if any(r.evaluator for r in rows):
        console.print(gate_table([r for r in rows if r.evaluator]))
    for (model, variant), (decision, reason) in verdicts.items():
        console.print(f"{model}/{variant}: [bold {GATE_COLOUR[decision]}]{decision}[/] - {reason}",
                      soft_wrap=True)
    if not verdicts:
        console.print(f"suite {name!r} makes no tuned variant: nothing to judge")
    decisions = {decision for decision, _ in verdicts.values()}
    sys.exit(GATE_EXIT["NO-GO"] if "NO-GO" in decisions else
             GATE_EXIT["INCONCLUSIVE"] if "INCONCLUSIVE" in decisions else GATE_EXIT["GO"])


GATE_COLOUR = {"GO": "green", "NO-GO": "red", "INCONCLUSIVE": "yellow"}


def gate_table(rows: list) -> object:
    """The gate per variant and evaluator: loss (positive = worse than the base, in the
    units of the evaluator's item score) with its interval, max_loss, decision."""
    from rich.table import Table

    table = Table(title="Gate: loss against the base \\[interval], Holm-adjusted p")
    for column in ("variant", "evaluator", "loss", "max", "p", "decision"):
        table.add_column(column, overflow="fold")
    for r in rows:
        scored = r.loss is not None
        table.add_row(r.variant, f"{r.evaluator} ({r.unit})" if scored else r.evaluator,
                      f"{r.loss:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]" if scored else
                      "not scored", f"{r.max_loss:g}" if scored else "",
                      f"{r.p_holm:.2g}" if scored else "",
                      f"[{GATE_COLOUR[r.decision]}]{r.decision}")
    return table
