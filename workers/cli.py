"""The `clearmark` command line."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from engine_build.cli import bench_command, engines_group
from models.cli import eval_command, train_command
from workers.settings import get_settings, set_settings

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clearmark")
@click.option("--db", "database_url", envvar="CLEARMARK_DATABASE_URL",
              help="Database URL (default: SQLite under CLEARMARK_DATA_DIR, ./.clearmark).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(database_url: str | None, verbose: bool) -> None:
    """clearmark: find and remove visible watermarks from product photos.

    Runs in-process with SQLite and local files (`clearmark clean`), or as a service:
    `clearmark submit` enqueues jobs on Redis, `clearmark worker` processes them.
    """
    _setup_logging(verbose)
    if database_url:
        set_settings(get_settings().replace(database_url=database_url))


def find_images(paths: list[Path], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image under the given paths."""
    found = []
    for root in paths:
        if root.is_file():
            found.append((root, Path(root.name)))
            continue
        pattern = "**/*" if recursive else "*"
        for path in sorted(root.glob(pattern)):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS \
                    and not any(part.startswith(".") for part in path.relative_to(root).parts):
                found.append((path, path.relative_to(root)))
    return found


@cli.command()
@click.argument("in_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the cleaned images (same relative paths and names).")
@click.option("--masks", "masks_dir", type=click.Path(path_type=Path),
              help="Also write each detected mask here as <name>.png.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("-w", "--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each loads the models once).")
def clean(in_dir: Path, out_dir: Path, masks_dir: Path | None, recursive: bool,
          workers: int) -> None:
    """Clean every image in IN_DIR into --out, in this process (no server needed).

    Each image becomes a job recorded in the database (SQLite by default), so
    `clearmark status` shows what happened afterwards. Files that cannot be read fail
    their own job with a reason; the rest of the folder carries on.
    """
    from workers.local import clean_folder

    images = find_images([in_dir], recursive)
    if not images:
        raise click.ClickException(f"no images found in {in_dir}"
                                   + ("" if recursive else " (try --recursive)"))
    summary = clean_folder(images, out_dir, masks_dir, workers=workers)
    click.echo(summary.render())
    if summary.counts.get("failed"):
        sys.exit(1)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--tenant", default="local", show_default=True, help="Tenant (storefront) name.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("--bulk", is_flag=True, help="Use the bulk queue (lower priority than uploads).")
def submit(inputs: tuple[Path, ...], tenant: str, recursive: bool, bulk: bool) -> None:
    """Upload images to storage and enqueue a job for each on the broker.

    Prints one job id per line (tab, then the file). The same file submitted again for the
    same tenant returns its existing job instead of a new one.
    """
    from workers.submit import submit_files

    images = find_images(list(inputs), recursive)
    if not images:
        raise click.ClickException("no images found")
    for job_id, path in submit_files([p for p, _ in images], tenant=tenant, bulk=bulk):
        click.echo(f"{job_id}\t{path}")


@cli.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: uploads,bulk).")
@click.option("-c", "--concurrency", type=int, help="Child processes (default from settings).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-P", "--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "solo", "threads"]))
@click.option("-n", "--hostname", help="Worker node name (default celery@host).")
def worker(queues: str | None, concurrency: int | None, loglevel: str, pool: str,
           hostname: str | None) -> None:
    """Start a Celery worker on the configured broker (Redis by default)."""
    from workers.tasks import app

    settings = get_settings()
    queues = queues or f"{settings.queue_uploads},{settings.queue_bulk}"
    argv = ["worker", "-Q", queues, "-c", str(concurrency or settings.worker_concurrency),
            "-l", loglevel, "-P", pool, "-E"]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


@cli.command()
@click.option("--failures", default=10, show_default=True, help="Recent failures to list.")
def status(failures: int) -> None:
    """Counts of jobs by status and the most recent failures."""
    from workers.reports import status_text

    click.echo(status_text(get_settings().database_url, failures))


@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from workers import migrate

    migrate.upgrade(revision=revision)
    click.echo(f"database at {revision}: {get_settings().database_url}")


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True)
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes everything)."""
    from workers import migrate

    migrate.downgrade(revision=revision)


@db.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    from workers import migrate

    migrate.current()


@cli.command()
@click.option("--host", help="Interface to listen on (default CLEARMARK_API_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default CLEARMARK_API_PORT, 8000).")
@click.option("--workers", "processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="uvicorn worker processes.")
def api(host: str | None, port: int | None, processes: int) -> None:
    """Serve the storefront HTTP API (OpenAPI document at /v1/openapi.json)."""
    import uvicorn

    settings = get_settings()
    uvicorn.run("workers.api:app", host=host or settings.api_host, port=port or settings.api_port,
                workers=processes, proxy_headers=True)


@cli.group()
def tenants() -> None:
    """Tenants (storefronts) and their API keys."""


@tenants.command("create")
@click.argument("name")
@click.option("--webhook", help="URL that receives a signed POST when each job finishes.")
def tenants_create(name: str, webhook: str | None) -> None:
    """Create tenant NAME and print its API key and webhook secret (shown only this once)."""
    from workers.db import session_scope
    from workers.errors import BadInput
    from workers.tenants import TenantExists, create_tenant
    from workers.webhooks import check_callback_url

    settings = get_settings()
    try:
        if webhook:
            check_callback_url(webhook, settings)
        with session_scope(settings.database_url) as session:
            tenant, key = create_tenant(session, name, webhook_url=webhook)
            tenant_id, secret = tenant.id, tenant.webhook_secret
    except (BadInput, TenantExists) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"tenant          {name} ({tenant_id})\napi key         {key}\n"
               f"webhook secret  {secret}\nStore both now: they are not shown again.")


@tenants.command("list")
def tenants_list() -> None:
    """Tenants with their id and webhook URL (never keys)."""
    from sqlalchemy import select

    from workers.db import Tenant, session_scope

    with session_scope(get_settings().database_url) as session:
        for t in session.scalars(select(Tenant).order_by(Tenant.name)):
            click.echo(f"{t.id}\t{t.name}\t{'key' if t.api_key_hash else 'no key'}\t"
                       f"{t.webhook_url or '-'}")


cli.add_command(train_command)
cli.add_command(eval_command)
cli.add_command(engines_group)
cli.add_command(bench_command)


def main() -> None:
    cli(prog_name="clearmark")
