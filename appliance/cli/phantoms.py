"""``appliance phantoms generate|list-sites``: synthetic studies with known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Synthetic CT/MR phantom studies with known truth.", no_args_is_help=True)

_KINDS = ("ct_abdomen", "mr_t1c", "mr_flair")


def _parse_triple(value: str | None, what: str, *, integer: bool) -> tuple[float, ...] | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
    try:
        numbers = tuple(int(p) if integer else float(p) for p in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or min(numbers) <= 0:
        kind = "integers" if integer else "numbers"
        raise typer.BadParameter(
            f"{what} needs three positive {kind} as SLICES,ROWS,COLUMNS, not {value!r}"
        )
    return numbers


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the studies into.")],
    kind: Annotated[
        str, typer.Option(help="What to generate: ct_abdomen, mr_t1c or mr_flair.")
    ] = "ct_abdomen",
    site: Annotated[
        str, typer.Option(help="Scanner profile: 'default' or a preset (see list-sites).")
    ] = "default",
    cases: Annotated[int, typer.Option(min=1, max=1000, help="Number of studies.")] = 1,
    seed: Annotated[
        int | None, typer.Option(help="Override the site's seed (one seed, one cohort).")
    ] = None,
    first_case: Annotated[int, typer.Option(min=0, help="Number of the first case.")] = 0,
    matrix: Annotated[
        str | None,
        typer.Option(help="Override the grid size as SLICES,ROWS,COLUMNS (e.g. 24,64,64)."),
    ] = None,
    spacing: Annotated[
        str | None,
        typer.Option(help="Override the voxel size in mm as SLICE,ROW,COLUMN (e.g. 8,6,6)."),
    ] = None,
) -> None:
    """Write phantom studies as DICOM series, each with a truth.npz, and print a table."""
    if kind not in _KINDS:
        raise typer.BadParameter(f"choose one of {', '.join(_KINDS)}", param_hint="--kind")
    from appliance.tools.phantom_studies import GeneratedCase, generate_cases, site_names
    from models.site_distribution import is_generated

    if site not in site_names() and not is_generated(site):
        raise typer.BadParameter(
            f"choose one of {', '.join(site_names())} or a generated site gen<seed>_<001-999>",
            param_hint="--site",
        )
    grid = _parse_triple(matrix, "--matrix", integer=True)
    voxel = _parse_triple(spacing, "--spacing", integer=False)

    header = f"{'case':>4}  {'series UID':<64}  {'shape':<13}  {'spacing mm':<16}  label volumes mL"
    typer.echo(header)

    def row(c: GeneratedCase) -> None:
        shape = "x".join(str(n) for n in c.shape)
        spacing_text = "x".join(f"{v:g}" for v in c.spacing_mm)
        volumes = ", ".join(f"{name} {ml:.1f}" for name, ml in c.label_volumes_ml.items())
        typer.echo(f"{c.case:>4}  {c.series_uid:<64}  {shape:<13}  {spacing_text:<16}  {volumes}")

    try:
        written = generate_cases(
            kind,
            site,
            cases,
            out,
            seed=seed,
            first_case=first_case,
            matrix=None if grid is None else (int(grid[0]), int(grid[1]), int(grid[2])),
            spacing_mm=None if voxel is None else (voxel[0], voxel[1], voxel[2]),
            on_case=row,
        )
    except (ValueError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{len(written)} {kind} case(s) from site {site} written to {out}")


@app.command("list-sites")
def list_sites(
    generated: int = typer.Option(
        0, "--generated", help="also describe the first N generated sites (gen<seed>_<NNN>)"
    ),
    seed: int = typer.Option(0, "--seed", help="the consortium seed of the generated sites"),
) -> None:
    """Print the scanner profiles that --site accepts: the presets, and generated
    hospitals gen<seed>_001 ... gen<seed>_999 drawn from models.site_distribution."""
    from models.phantoms import CT_DEFAULT, MR_DEFAULT, SITE_PRESETS, SiteProfile
    from models.site_distribution import generated_hospital, generated_names

    try:
        names = generated_names(generated, seed) if generated else ()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--generated/--seed") from exc

    def describe(p: SiteProfile) -> str:
        grid = "x".join(str(n) for n in p.matrix)
        spacing = "x".join(f"{v:.3g}" for v in p.spacing_mm)
        lesions = p.lesions
        return (
            f"{grid} @ {spacing} mm, noise {p.noise_sigma:.3g}, "
            f"scale {p.intensity_scale:.3g} offset {p.intensity_offset:+.3g}, "
            f"lesions {lesions.min_count}-{lesions.max_count} of "
            f"{lesions.min_diameter_mm:.3g}-{lesions.max_diameter_mm:.3g} mm, seed {p.seed}"
        )

    typer.echo("default: demonstration protocols")
    typer.echo(f"  CT: {describe(CT_DEFAULT)}, {CT_DEFAULT.contrast_phase}")
    typer.echo(f"  MR: {describe(MR_DEFAULT)}")
    for name, hospital in SITE_PRESETS.items():
        typer.echo(f"{name}: {hospital.description} ({hospital.cases} suggested cases)")
        typer.echo(f"  CT: {describe(hospital.ct)}, {hospital.ct.contrast_phase}")
        typer.echo(f"  MR: {describe(hospital.mr)}")
    for name in names:
        hospital = generated_hospital(name)
        typer.echo(f"{name}: {hospital.description}")
        typer.echo(f"  CT: {describe(hospital.ct)}, {hospital.ct.contrast_phase}")
        typer.echo(f"  MR: {describe(hospital.mr)}")
    if not names:
        typer.echo("gen<seed>_<001-999>: generated hospitals (--generated N describes them)")
