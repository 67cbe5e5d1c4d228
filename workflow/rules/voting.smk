# From pixels to objects: max-voting per sample, and (inference.object_offsets, cross-validated
# sheets) the per-class offsets of the second-phase vote, fitted per fold on the other folds.


rule fit_object_offsets:
    """Per-class offsets of the second-phase object vote for one fold, fitted on the OTHER folds'
    test objects, each predicted by its own fold's model (no fold tunes on its own test set)."""
    input:
        unpack(other_folds_evidence),
    output:
        os.path.join(RUN, layout.OBJECT_OFFSETS),
    params:
        classes=CLASSES_JSON,
        objective=OBJECT_OFFSETS,
        slack=config["inference"]["object_offset_recall_slack"],
        edges=config["inference"]["object_offset_size_edges"],
        samples=lambda w: [s for _, s in other_folds_test_samples(w)],
    log:
        layout.log_path("fit_object_offsets", CV),
    benchmark:
        layout.benchmark_path("fit_object_offsets", CV),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "mvfcnn fit-object-offsets --classes-json {params.classes:q} --samples {params.samples:q}"
        " --probs {input.probs:q} --objects-ids {input.ids:q} --objects {input.objects:q}"
        " --objective {params.objective:q} --recall-slack {params.slack:q}"
        " --size-edges {params.edges:q} --out {output:q}"
        " 2> {log:q}"


rule vote:
    """Max-voting: each object takes the majority non-matrix class of its predicted pixels
    (inference.object_vote: of the class map, or of each pixel's best non-matrix class, after
    the fold's object offsets when inference.object_offsets is on)."""
    input:
        **vote_inputs(),
    output:
        os.path.join(RUN, "votes/{sample}.csv"),
    params:
        classes=CLASSES_JSON,
        source=vote_source_arg,
    log:
        layout.log_path("vote", CV, extra="_{sample}"),
    benchmark:
        layout.benchmark_path("vote", CV, extra="_{sample}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mvfcnn vote {params.source:q} --objects-ids {input.ids:q} --objects {input.objects:q}"
        " --classes-json {params.classes:q} --sample {wildcards.sample:q} --out {output:q} 2> {log:q}"
