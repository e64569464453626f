"""The reproduction study (issue 7): `grid` trains and evaluates the arms over seeds, `report` writes
reports/README.md and its plots from the run records."""
