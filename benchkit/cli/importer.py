"""``benchkit import``: released checkpoints (MAR, KL-16, RQ-VAE, RQ-Transformer) as benchkit directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchkit.cli.common import err_console


def import_checkpoint(
    kind: Annotated[str, typer.Argument(help="mar | kl16 | rqvae | rqtransformer")],
    path: Annotated[Path, typer.Argument(help="The released file (.pth / .ckpt / .pt).")],
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="mar: mar_base | mar_large | mar_huge or a JSON file of MAR's arguments; kl16: kl16 (default: "
            "read from the shapes); rqvae / rqtransformer: a release name or config.yaml (default: the one "
            "beside PATH).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", "-o", help="Results root (default: results; generators: their tokenizer's root)."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="mar / rqtransformer: the imported tokenizer directory (or a run directory)."),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            "--data", help="Dataset the run evaluates against (tokenizers): imagefolder:PATH with train/ and val/."
        ),
    ] = "imagefolder:imagenet",
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Image size (kl16; default 256; rqvae: from config.yaml).")
    ] = None,
    container_key: Annotated[
        str | None,
        typer.Option("--container-key", help="Entry of the file to read (default: the EMA weights when present)."),
    ] = None,
) -> None:
    """Import a released checkpoint as a tokenizer directory (kl16, rqvae) or a run directory (mar, rqtransformer).

    Example: benchkit import kl16 kl16.ckpt && benchkit import mar checkpoint-last.pth --arch mar_base
    --tokenizer results/tokenizers/kl-<fp>
    """
    from benchkit.importers.api import import_checkpoint  # late: heavy (torchvision, pandas); --help stays fast

    target, prov = import_checkpoint(
        kind,
        path,
        tokenizer=tokenizer,
        out_dir=out_dir,
        arch=arch,
        data=data,
        image_size=image_size,
        container_key=container_key,
    )
    err_console.print(
        f"imported {kind} from {prov['source']} (sha256 {prov['sha256'][:12]}..., entry "
        f"{prov['container_key']!r}, {'EMA' if prov['ema'] else 'non-EMA'} weights, architecture from "
        f"{prov['arch_from']})",
        highlight=False,
        soft_wrap=True,
    )
    typer.echo(str(target))


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("import")(import_checkpoint)
