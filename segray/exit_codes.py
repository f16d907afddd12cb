"""What each command's exit status means, shown in its ``--help``."""

#: Every command but the labelling ones.
EXIT_CODES = "exit codes: 0 done; 1 an unexpected failure; 2 bad input, options or credentials (named in the message)"
#: ``segray label`` and ``segray nightly``.
LABEL_EXIT_CODES = (
    "exit codes: 0 done; 1 the run stopped (e.g. another run took its output over after it stalled; what it "
    "wrote is kept); 2 bad input, model, credentials or options, or another run is writing the output "
    "(nothing labelled); 3 more frames failed than --max-failed-fraction allows (everything labelled is written)"
)
