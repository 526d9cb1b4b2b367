"""togi's version, in a module of its own: the package root, the CLI and the run directory's record of
library versions read it without importing anything else."""

__version__ = "0.1.0"
