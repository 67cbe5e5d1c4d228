"""`mvfcnn classify` for new micrographs: model bundles (bundle), the pipeline, its outputs and
its command line (cli)."""
