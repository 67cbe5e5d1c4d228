"""Segmenting a micrograph: sliding-window prediction and stitching (predict); the command line
of ``mvfcnn predict`` (cli)."""
