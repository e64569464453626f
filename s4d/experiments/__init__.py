"""The reproduction study: `grid` trains and evaluates the arms over seeds, `report` writes
reports/README.md and its plots from the run records."""
