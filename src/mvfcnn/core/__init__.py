"""Shared by every stage, and free of torch where it can be: errors, the results layout, image
I/O, class sets, config defaults (settings), which runs exist (runs), device/precision/threads
(runtime), progress lines and the shared CLI parser pieces (cli_args)."""
