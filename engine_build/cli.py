"""`clearmark engines ...` and `clearmark bench` (mounted by workers/cli.py)."""
import click


@click.group("engines")
def engines_group():
    """Export ONNX models and build TensorRT engines."""


@click.command("bench")
def bench_command():
    """Benchmark the engines (placeholder)."""
    raise click.ClickException("not built yet")
