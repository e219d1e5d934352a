"""``tierguard replay``: recorded outcomes through routing strategies, with a JSON and an HTML report.

Modules: :mod:`.data` (outcomes aligned to a policy's tiers), :mod:`.strategies` (capable-only,
pre-route classifier, allowlist, cascade, cascade+shadow), :mod:`.monitors` (the drift scenario),
:mod:`.report_html` (the offline HTML report) and :mod:`.main` (the command).
"""
