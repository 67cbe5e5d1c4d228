"""Micrographs in: the sample sheet's datasets (MetalDAM), the embedded synthetic set, preparing a
released image (prepare) and registering LOM onto SEM (registration); the command lines of
its verbs (cli)."""
