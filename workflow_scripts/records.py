"""Rule records: raw dataset files of one split -> normalised records (parquet)."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "records") as log:
    from lever_lm.data import build_records, write_records

    params = snakemake.params
    files = {kind: snakemake.input[kind] for kind in snakemake.input.keys()}
    records = build_records(params.format, None, snakemake.wildcards.split, params.caption_year, files)
    write_records(snakemake.output.records, records)
    log.info("%d %s records", len(records), snakemake.wildcards.split)
