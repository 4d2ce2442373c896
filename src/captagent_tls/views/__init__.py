"""What people look at: the console in colour or one line per message, progress and status
lines on the terminal, and the call-flow report (``--report calls.html``).

Views are edges like the sinks: they read messages and counters and never change what the
pipeline does.  What they need from a library (tqdm for the progress bar and status line) is
imported only when it is shown, so that a run without a terminal starts as fast as before.
"""
