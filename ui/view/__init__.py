"""The view layer: the only place that turns the pipeline's data into HTML, notes, CSS and
scripts (render.py, notes.py, a11y.py)."""
