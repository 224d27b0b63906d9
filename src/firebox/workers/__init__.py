"""See api.py for this component's contract."""
