"""Second-phase objects: the binary mask from the registered LOM (masking) and the connected
components the vote and the object baselines share (components); the command lines of its
verbs (cli)."""
