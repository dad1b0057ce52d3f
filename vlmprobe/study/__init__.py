"""Studies: every stage for many models x datasets from one YAML file, resumable, run locally in
processes or on a SLURM cluster through submitit.

:mod:`.spec` reads and checks the study file; :mod:`.stages` says what each stage runs through
the public API; :mod:`.jobs` lays out the jobs; :mod:`.launchers` runs them (local processes,
submitit); :mod:`.worker` is what runs inside a job; :mod:`.runner` coordinates, skips what is
done, keeps the status table; :mod:`.record` writes the run record (its docstring is the
record's schema).
"""
from .record import RECORD_NAME, read_record, record_path
from .runner import StudyPlan, StudyRun, plan_study, run_study
from .spec import StudySpec, load_study, write_template

__all__ = ["RECORD_NAME", "StudyPlan", "StudyRun", "StudySpec", "load_study", "plan_study",
           "read_record", "record_path", "run_study", "write_template"]
