"""Usage accounting: what one usage event counts toward, and how those counts are stored, kept and read.

- measures.py: the stored status class and cost source (named enums, one mapping to the proto enums) and
  the table of rollup measures, from which ingest's Python accumulation and reporting's SQL are derived,
  and what an event counts toward in budgets;
- rollup.py: the rollup key and the per-event accumulation ingest runs (generated from the measures);
- sql.py: the same measures as SQL aggregates over raw events, for reports;
- bounds.py: the per-event bounds on what an event adds, and why every sum stays within int64 (they
  saturate);
- compaction.py: folding per-minute rollups into hours and days, and pruning what is past retention;
- maintenance.py: compaction and pruning as the server's periodic jobs.
"""
