"""The investigator's case: named cases with their queries, the sightings confirmed or rejected
and notes, kept in one SQLite file beside the index (``store``), and exported as a record to
hand over: a self-contained HTML report, a CSV and a JSON (``report``).

Works on plain snapshots of sightings (dicts), so a case outlives a rebuilt index. The search
service and the CLI fill and read it.

May import: the bottom layer (``errors``, ``schema``, ``utils``); never ``search``,
``footage`` or ``cli``.
"""

from attreid.case.report import case_csv, case_html, case_json, chronology, export_case
from attreid.case.store import MARKS, Case, CaseError, CaseStore, Mark

__all__ = ["MARKS", "Case", "CaseError", "CaseStore", "Mark", "case_csv", "case_html",
           "case_json", "chronology", "export_case"]
