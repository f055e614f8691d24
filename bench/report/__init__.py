"""Reports from stored records: leaderboard.md, and under reports/ the tables as Markdown, CSV and
LaTeX, the plots, and the BinaryMoS paper comparison. Nothing here runs a model.

`bench.report.write.write_reports` writes them all.
"""
