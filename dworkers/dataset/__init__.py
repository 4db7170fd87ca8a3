"""The dataset feature's files: ``reader`` reads and checks a data file (CSV or JSON Lines) once,
``outputs`` keeps a dataset run's folder (results.jsonl, row reports, report.md, run.json)."""
