"""runtime: everything that loads, runs or reads an artifact, below the stages and above model/ (see issue 24)."""
