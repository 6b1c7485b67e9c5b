"""A hostile corpus for the auditor: malicious, malformed and oversized model files and data sets.

Nothing is committed: `corpus.build(folder)` writes the files at test time. Every payload, if it ever
ran, would only create a marker file next to it (see `corpus.Case.marker`).
"""
