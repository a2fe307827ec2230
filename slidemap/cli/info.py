"""``slidemap info``: this machine as slidemap sees it, and the precision ``auto`` takes on it."""

from __future__ import annotations

import typer

from slidemap.cli.app import app


@app.command()
def info() -> None:
    """This machine as slidemap sees it: CPU, threads, versions, and the precision `auto` takes (measured anew)."""
    import torch

    from slidemap.nn.device import (
        BF16_SPEEDUP,
        bf16_measurement,
        cache_dir,
        choose_precision,
        cpu_has_native_bf16,
        cpu_info,
        cpu_name,
        versions,
    )
    from slidemap.nn.engines import onnxruntime_available
    from slidemap.runtime import settings

    typer.echo(f"cpu        {cpu_name()}")
    typer.echo(f"flags      {', '.join(cpu_info()['flags']) or 'none of note'}")
    typer.echo(f"threads    {torch.get_num_threads()}")
    typer.echo("versions   " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    typer.echo("process    " + (" ".join(f"{k}={v}" for k, v in settings().items()) or "glibc's and libgomp's defaults")
               + " (slidemap.runtime; variables you set yourself are kept)")
    if not onnxruntime_available():
        typer.echo("onnx       not installed: --engine onnx / onnx-int8 need pip install 'slidemap[onnx]'")
    if cpu_has_native_bf16():
        m = bf16_measurement(remeasure=True)
        typer.echo(f"matmul     fp32 {m.fp32_gflops:.0f} GFLOP/s, bf16 {m.bf16_gflops:.0f} GFLOP/s: bf16 "
                   f"{m.speedup:.2f}x (auto takes bf16 from {BF16_SPEEDUP}x; kept in "
                   f"{cache_dir() / 'precision.json'})")
    choice = choose_precision("auto", "cpu")
    typer.echo(f"auto       --precision {choice.precision} on the CPU: {choice.why}")
    if torch.cuda.is_available():
        gpu = choose_precision("auto", "cuda")
        typer.echo(f"           --precision {gpu.precision} on {torch.cuda.get_device_name()}: {gpu.why}")
