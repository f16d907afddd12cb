"""What each command's exit status means, shown in its ``--help``."""

#: SIGTERM stopped the command (128 + 15): it cleaned up (the output's lease is released) before exiting.
TERMINATED = 143
#: Standard output was closed by its reader (``segray ... | head -1``), as a program ended by SIGPIPE (128 + 13).
BROKEN_PIPE = 141

_BAD_INPUT = "bad input, options or credentials (named in the message)"
_STOPPED = f"{TERMINATED} stopped by SIGTERM (rerun the same command to finish)"

#: Every command but the labelling ones.
EXIT_CODES = f"exit codes: 0 done; 1 an unexpected failure; 2 {_BAD_INPUT}; {_STOPPED}"
#: ``segray serve``: it runs until stopped, and SIGTERM is how a supervisor stops it.
SERVE_EXIT_CODES = (
    f"exit codes: 0 stopped by Ctrl-C or SIGTERM (the application shut down); 1 an unexpected failure; 2 {_BAD_INPUT}"
)
#: ``segray compact``.
COMPACT_EXIT_CODES = (
    f"exit codes: 0 done; 1 an unexpected failure; 2 {_BAD_INPUT}, or a run is writing the output (nothing "
    f"changed); {_STOPPED}"
)
#: ``segray label`` and ``segray nightly``.
LABEL_EXIT_CODES = (
    "exit codes: 0 done; 1 an unexpected failure, or the run stopped (e.g. another run took its output over "
    "after it stalled; what it wrote is kept); 2 bad input, model, credentials or options, or another run is "
    "writing the output (nothing labelled); 3 more frames failed than --max-failed-fraction allows (everything "
    "labelled is written); "
    f"{TERMINATED} stopped by SIGTERM (what it labelled is kept and the output released; rerunning finishes the run)"
)
