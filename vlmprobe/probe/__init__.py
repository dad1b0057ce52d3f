"""Linear probing by the paper's protocol: the protocol on arrays (:mod:`.protocol`), its fast
exact solver (:mod:`.svm`), bootstrap statistics (:mod:`.stats`), the saved probe
(:mod:`.linear`), results and tables (:mod:`.results`, :mod:`.tables`), and the stage over caches
(:mod:`.run`)."""
from .linear import LinearProbe, probe_path
from .protocol import PROBES, SOLVERS, T_GRID, ProbeConfig, c_value, fit_probe
from .results import ProbeResult
from .run import ProbeRun, run_probe
from .tables import compare_models, compare_paper, read_table, table_name, write_table

__all__ = ["LinearProbe", "PROBES", "ProbeConfig", "ProbeResult", "ProbeRun", "SOLVERS", "T_GRID",
           "c_value", "compare_models", "compare_paper", "fit_probe", "probe_path", "read_table",
           "run_probe", "table_name", "write_table"]
