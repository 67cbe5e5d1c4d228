"""Segmenting a micrograph: sliding-window prediction and stitching (predict)."""
