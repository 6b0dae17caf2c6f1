"""runtime: everything that loads, runs or reads an artifact, below the stages (issue 24 fills it in)."""
