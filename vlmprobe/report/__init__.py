"""The report of a study (or a cache directory): one self-contained HTML file and its Markdown
twin, every section built from the run record and the stages' outputs (:mod:`.build`)."""
from .build import EMBED_LIMIT_MB, Report, ReportConfig, run_report, write_report
from .cka import CkaResult, cka_matrix, linear_cka

__all__ = ["EMBED_LIMIT_MB", "CkaResult", "Report", "ReportConfig", "cka_matrix", "linear_cka", "run_report",
           "write_report"]
