"""`clearmark train` and `clearmark eval` (mounted by workers/cli.py)."""
import click


@click.command("train")
def train_command():
    """Train a model (placeholder)."""
    raise click.ClickException("not built yet")


@click.command("eval")
def eval_command():
    """Evaluate the shipped models (placeholder)."""
    raise click.ClickException("not built yet")
