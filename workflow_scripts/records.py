"""Rule records: raw dataset files of one split -> normalised records (parquet)."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "records") as log:
    from lever_lm.data import build_records, write_records

    params = snakemake.params
    files = {kind: snakemake.input[kind] for kind in snakemake.input.keys()}
    records = build_records(params.format, None, snakemake.wildcards.split, params.caption_year, files)
    if snakemake.wildcards.split == "train":
        from lever_lm.sampling import check_cand_num_fits

        # read from the config, not params: a cand_num change must not rebuild the records (and all downstream);
        # with records present, the same check runs at planning time (lever_lm.config.check_cand_num_fits_records)
        candidates = snakemake.config["candidates"]
        check_cand_num_fits(
            records["image_id"],
            records["question_id"],
            candidates["cand_num"],
            candidates.get("exclude_same_image", True),
            f"split train ({files['annotations']})",
        )
    write_records(snakemake.output.records, records)
    log.info("%d %s records", len(records), snakemake.wildcards.split)
