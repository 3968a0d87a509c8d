"""The run folder and what is in it, one module a job:

- `folder`: the layout, the exact names a run writes (all --overwrite may delete), the lock (RunFolder, RunLock)
- `run_json`: run.json, and the check that a run.json is one a run wrote (NotARunJson)
- `atomic`: files written whole or not at all (temporary file + rename), Parquet with page checksums
- `parts`: part files, written as work finishes (PartWriter) and read back whole or not at all
- `resume`: what a folder already holds for a run (open_run_folder), and claiming it when the run starts
- `merge`: parts + the current manifest -> results.parquet, exactly the manifest's rows in its order
- `reader`: the one reader of run folders (eval, export): open_results, never an earlier run's results as current

The names below are the package's interface; import them from here.
"""

from .atomic import atomic_write_bytes, write_json, write_parquet_atomic
from .folder import RunFolder, RunLock, ResumeError, lock_run_folder
from .merge import MergeSummary, merge_results
from .parts import INPUT_DIGEST, RUN_PART_SCHEMA, PartUnreadable, PartWriter, read_part, read_parts
from .reader import COMPLETE, FILE, UNFINISHED, ResultsError, RunResults, open_results
from .resume import ResumeState, claim_run_folder, open_run_folder
from .run_json import RESULTS_RUN_ID, NotARunJson, versions

__all__ = [
    "COMPLETE", "FILE", "INPUT_DIGEST", "RESULTS_RUN_ID", "RUN_PART_SCHEMA", "UNFINISHED", "MergeSummary",
    "NotARunJson", "PartUnreadable", "PartWriter", "ResultsError", "ResumeError", "ResumeState", "RunFolder",
    "RunLock", "RunResults", "atomic_write_bytes", "claim_run_folder", "lock_run_folder", "merge_results",
    "open_results", "open_run_folder", "read_part", "read_parts", "versions", "write_json", "write_parquet_atomic",
]
