"""Everything that talks to Ray: cluster start/connect, render actors, the job executor."""
