"""One neutral result model (result.py), rendered to JSON and, through pytest-html, to HTML."""
