"""``kd-lightning report``: a teacher and its students compared on one test set, as Markdown, PNG and JSON."""

from kd_lightning.report.build import ModelReport, build_report, report

__all__ = ["ModelReport", "build_report", "report"]
