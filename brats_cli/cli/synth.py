"""`brats synth OUT`: labelled phantom cases in the BraTS training layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brats_cli.choices import Naming
from brats_cli.cli import console


def synth(
    output: Annotated[Path, typer.Argument(help="Folder for the case folders (created if needed).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of cases.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Series seed; case i depends only on (seed, i).")] = 0,
    naming: Annotated[
        Naming, typer.Option(help="2021: <ID>_flair.nii.gz, ET = 4; 2023: <ID>-t2f.nii.gz, ET = 3.")
    ] = Naming.BRATS2021,
    non_enhancing: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of lesions whose core does not enhance (labelled NCR, no ET). The default keeps "
            "every series as before; a higher share gives training data for lower-grade looking cores.",
        ),
    ] = 0.15,
    generator: Annotated[
        int,
        typer.Option(
            "--generator",
            min=1,
            max=4,
            help="Phantom generator version. 1: the series as they have always been (the default weights "
            "were trained on these). 2: domain-randomised, for training that has to carry over to real scans: "
            "random per-class intensities (log-normal around the usual contrasts), gamma, bias field and noise "
            "per channel; thick slices (2-6 mm) and sub-voxel mis-registration in some channels; edema grown "
            "through white matter, uneven nodular rims; unlabelled enhancing vessels and choroid plexus on "
            "T1ce and periventricular FLAIR hyperintensity. 3: version 1 with its non-enhancing lesions drawn "
            "as diffuse low-grade gliomas (larger, little edema, brighter than edema on T2 and often darker "
            "on FLAIR, an infiltrative margin); use with --non-enhancing. 4: version 3 with the main "
            "tumour's outline taken from real label maps (--shapes), rotated, mirrored, scaled and deformed. "
            "Versions 2 to 4 record 'brats-synth vN seed S index I' (4: and the shape's file name) in the "
            "NIfTI descrip field (version 1 files stay byte for byte as before, descrip empty). Each case "
            "still depends only on (seed, index, version) and, for 4, the label maps in the order given.",
        ),
    ] = 1,
    shapes: Annotated[
        list[Path] | None,
        typer.Option(
            "--shapes",
            help="Generator 4: a BraTS-space label map (240x240x155 at 1 mm; labels 1, 2 and 3 or 4) whose "
            "tumour fits in a brain, or a folder of them, whose tumour outlines the phantoms take; repeat for "
            "more. Never pass the segmentation of a case you will score the trained model on.",
        ),
    ] = None,
    preview: Annotated[
        Path | None, typer.Option(help="Also write a PNG with a row per case at its slice with most tumour.")
    ] = None,
) -> None:
    """Write N synthetic labelled cases (FLAIR, T1, T1ce, T2, seg; 240x240x155, LPS) into OUTPUT.
    Each case folder appears whole or not at all (built under a hidden name, then renamed)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from brats_cli import synth as phantoms
    from brats_cli.errors import BratsError
    from brats_cli.interrupts import Interrupted, interruptible

    rows: list[phantoms.PreviewRow] = []
    written: list[str] = []

    def finished() -> str:
        return f"{len(written)} of {n} case(s) finished and written to {output}" + (
            f" ({', '.join(written)})" if written else ""
        )

    try:
        with interruptible():
            # Everything that can refuse the command, before anything is written.
            phantoms.template_paths()
            if (generator == 4) != bool(shapes):
                raise typer.BadParameter("generator 4 takes tumour shapes, and only it does", param_hint="--shapes")
            tumour_shapes = phantoms.load_tumour_shapes(shapes) if shapes else ()
            if preview is not None:
                if preview.suffix.lower() != ".png":
                    raise typer.BadParameter(f"{preview}: expected a .png file name", param_hint="--preview")
                phantoms.require_preview()
            started = time.perf_counter()
            with Progress(
                TextColumn("synth"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=console.stderr,
            ) as progress:
                task = progress.add_task("", total=n)

                def on_case(phantom: phantoms.Phantom) -> None:
                    written.append(phantom.case_id)
                    if preview is not None:
                        rows.append(phantoms.preview_row(phantom))
                    progress.update(task, advance=1, description=phantom.case_id)

                phantoms.write_phantom_cases(
                    output,
                    n,
                    seed,
                    naming,
                    on_case=on_case,
                    non_enhancing=non_enhancing,
                    generator=generator,
                    shapes=tumour_shapes,
                )
            seconds = time.perf_counter() - started
            if preview is not None:
                phantoms.save_preview(rows, preview)
    except Interrupted as interrupted:
        console.error(f"interrupted; {finished()}; rerun the same command to make them all")
        raise typer.Exit(interrupted.exit_code) from None
    except BratsError as error:
        console.error(str(error))
        if written:  # a full disk after some cases: those are whole, the rest are not there
            console.error(finished())
        raise typer.Exit(console.EXIT_CASE_FAILED if written else console.EXIT_UNUSABLE) from None
    console.stderr.print(f"wrote {n} case(s) to {output} in {seconds:.1f} s ({seconds / n:.1f} s a case)")
    if preview is not None:
        console.stderr.print(f"preview: {preview}")
